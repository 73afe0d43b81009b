"""FID / KID functional cores against closed forms and naive references; feature extraction; weights handling."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metrics import distribution as dist
from util.errors import CheckpointError, OptionError


def _rand_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # ||mu1 - mu2||^2 + sum (sqrt v1 - sqrt v2)^2 for commuting (diagonal) covariances
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert dist.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, abs=1e-10)


def test_frechet_rotated_gaussians_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    v1, v2 = rng.uniform(0.5, 3, 5), rng.uniform(0.5, 3, 5)
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    expected = np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert dist.frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, abs=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid passes scipy's deprecated sqrtm(disp=)
def test_frechet_identical_is_zero_and_matches_pytorch_fid():
    pfs = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = _rand_cov(rng, 16), _rand_cov(rng, 16)
    assert dist.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    ref = pfs.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert dist.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_gaussian_samples_near_closed_form():
    rng = np.random.default_rng(2)
    n, d = 20000, 4
    a = rng.normal(0.0, 1.0, (n, d))
    b = rng.normal(0.5, 2.0, (n, d))
    expected = d * 0.5 ** 2 + d * (1.0 - 2.0) ** 2  # 5.0
    assert dist.fid_from_features(a, b) == pytest.approx(expected, rel=0.03)
    assert dist.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError):
        dist.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        dist.frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        dist.gaussian_stats(np.zeros((1, 4)))


def _naive_mmd2(x, y):
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (sxx + syy) / (m * (m - 1)) - 2 * sxy / m ** 2


def test_mmd2_matches_naive_loop():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    assert dist.mmd2_unbiased(x, y) == pytest.approx(_naive_mmd2(x, y), rel=1e-12)


def test_kid_constant_features_closed_form():
    # x = 0, y = c: k(0,0) = 1, k(c,c) = (|c|^2/d + 1)^3, k(0,c) = 1  ->  MMD^2 = (|c|^2/d + 1)^3 - 1
    d = 4
    x = np.zeros((12, d))
    y = np.full((12, d), 2.0)
    out = dist.kid_from_features(x, y, subset_size=5, n_subsets=7)
    assert out["kid"] == pytest.approx((16 / 4 + 1) ** 3 - 1)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-12)
    assert (out["subset_size"], out["n_subsets"]) == (5, 7)


def test_kid_same_distribution_near_zero_and_subset_capped():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    far = rng.normal(1.0, 1.0, size=(200, 8))
    same = dist.kid_from_features(a, b, subset_size=1000, n_subsets=10)
    diff = dist.kid_from_features(a, far, subset_size=1000, n_subsets=10)
    assert same["subset_size"] == 200
    assert abs(same["kid"]) < 0.02 * diff["kid"]
    with pytest.raises(ValueError):
        dist.kid_from_features(a[:1], b[:1])


class _TinyExtractor(nn.Module):
    """A small fixed feature extractor: conv + global average pool, 6-d features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return [torch.relu(self.conv(x * 2 - 1))]  # list output and a spatial map, as pytorch-fid returns


def _write_images(folder, arrays, prefix):
    paths = []
    for i, a in enumerate(arrays):
        p = folder / f"{prefix}{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def test_extract_features_and_distribution_metrics_with_tiny_extractor(tmp_path):
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(7)]
    paths = _write_images(tmp_path, imgs, "r")
    net = _TinyExtractor().eval()
    feats = dist.extract_features(paths, net, batch_size=3, progress=False)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = net(x)[0].mean(dim=(2, 3)).double().numpy()
    assert feats.shape == (7, 6)
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
    same = dist.distribution_metrics(paths, paths, model=net, kid_subset_size=5, kid_subsets=3, progress=False)
    assert same["status"] == "computed" and same["fid"] == pytest.approx(0.0, abs=1e-6)
    dark = _write_images(tmp_path, [a // 3 for a in imgs], "f")
    other = dist.distribution_metrics(paths, dark, model=net, kid_subset_size=5, kid_subsets=3, progress=False)
    assert other["fid"] > 1e-3 and other["kid_x1e3"] == pytest.approx(other["kid"] * 1e3)
    assert other["kid_subset_size"] == 5 and other["kid_subsets"] == 3


def test_missing_weights_skip_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert dist.cached_inception_path() == tmp_path / "hub" / "checkpoints" / dist.INCEPTION_FILE
    path, reason = dist.find_inception_weights(None)
    assert path is None and "--inception_weights" in reason and dist.INCEPTION_URL in reason
    out = dist.distribution_metrics([tmp_path / "a.png"] * 2, [tmp_path / "b.png"] * 2, progress=False)
    assert out["status"] == "skipped"
    with pytest.raises(OptionError, match="inception_weights"):
        dist.find_inception_weights(tmp_path / "nope.pth")


def _fid_inception_state_dict():
    """Random weights with the architecture of pytorch-fid's FID Inception (built here, not by the code under test)."""
    pfi = pytest.importorskip("pytorch_fid.inception")
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net.state_dict()


def test_load_fid_inception_from_local_file_never_downloads(tmp_path, monkeypatch):
    pfi = pytest.importorskip("pytorch_fid.inception")
    sd = _fid_inception_state_dict()
    weights = tmp_path / dist.INCEPTION_FILE
    torch.save(sd, weights)

    def no_network(*args, **kwargs):
        raise AssertionError("network download attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = dist.load_fid_inception(weights)
    assert pfi.load_state_dict_from_url is not None and pfi.load_state_dict_from_url.__name__ != "<lambda>"
    with torch.no_grad():
        out = model(torch.rand(2, 3, 40, 40))[0]
    assert out.shape == (2, 2048, 1, 1)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        dist.load_fid_inception(tmp_path / "bad.pth")
