"""PSNR/SSIM equal scikit-image's direct calls (BCI protocol) on random and real-tissue images."""
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics.image_quality import mean_psnr, psnr, ssim

IHC = "samples/ihc.png"


def _ref(real, fake):
    with np.errstate(divide="ignore"):
        p = peak_signal_noise_ratio(real, fake, data_range=255)
    return p, structural_similarity(real, fake, channel_axis=-1, data_range=255)


@pytest.fixture(scope="module")
def tissue():
    return np.asarray(Image.open(IHC).convert("RGB"))[:200, :160]


def _distortions(img, rng):
    noise = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    blur = ndimage.gaussian_filter(img.astype(float), sigma=(1.5, 1.5, 0)).round().astype(np.uint8)
    shift = np.roll(img, (3, -2), axis=(0, 1))
    return {"noise": noise, "blur": blur, "shift": shift}


@pytest.mark.parametrize("kind", ["noise", "blur", "shift"])
def test_real_tissue_matches_skimage(tissue, kind):
    fake = _distortions(tissue, np.random.default_rng(1))[kind]
    p_ref, s_ref = _ref(tissue, fake)
    assert abs(psnr(tissue, fake) - p_ref) <= 1e-9
    assert abs(ssim(tissue, fake) - s_ref) <= 1e-9
    assert 10 < p_ref < 45 and 0 < s_ref < 1  # the distortions are real, not no-ops


@pytest.mark.parametrize("shape", [(64, 64, 3), (37, 53, 3), (7, 7, 3)])
def test_random_images_match_skimage_odd_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = rng.integers(0, 256, shape, dtype=np.uint8)
    p_ref, s_ref = _ref(a, b)
    assert abs(psnr(a, b) - p_ref) <= 1e-9
    assert abs(ssim(a, b) - s_ref) <= 1e-9


def test_psnr_hand_computed():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16  # MSE = 256 / 192
    expected = 10 * math.log10(255 ** 2 / (256 / 192))
    assert psnr(a, b) == pytest.approx(expected, abs=1e-12)


def test_identical_pair_is_infinite_and_silent(tissue, recwarn):
    assert psnr(tissue, tissue) == math.inf
    assert ssim(tissue, tissue) == 1.0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_mean_psnr_excludes_infinite():
    m, n_fin, n_inf = mean_psnr([20.0, math.inf, 30.0])
    assert (m, n_fin, n_inf) == (25.0, 2, 1)
    assert mean_psnr([math.inf]) == (None, 0, 1)
    with pytest.raises(ValueError):
        mean_psnr([float("nan")])


@pytest.mark.parametrize("bad", [np.zeros((16, 16, 3), np.float32), np.zeros((16, 16), np.uint8),
                                 np.zeros((16, 16, 4), np.uint8)])
def test_rejects_wrong_layout(bad):
    ok = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        psnr(ok, bad)
    with pytest.raises(ValueError):
        ssim(bad, ok)


def test_rejects_shape_mismatch_and_tiny():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8))
    with pytest.raises(ValueError, match="7x7"):
        ssim(np.zeros((6, 16, 3), np.uint8), np.zeros((6, 16, 3), np.uint8))
