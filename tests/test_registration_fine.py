"""Fine stage: elastix affine + B-spline on real H&E recovers a known smooth deformation (itk-elastix)."""
import numpy as np
import pytest

from registration import synthetic
from registration.stains import grey_channel

pytest.importorskip("itk", reason="fine registration needs itk-elastix")
# itk's SWIG wrappers emit ~1000 of these on import; they say nothing about this project
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute")

from registration.fine import FineParams, apply_to_rgb, register  # noqa: E402


@pytest.fixture(scope="module")
def tile():
    import openslide

    with openslide.OpenSlide("samples/cmu_small_region.svs") as s:  # real H&E, read directly (independent reader)
        return np.asarray(s.read_region((1152, 896), 0, (256, 256)).convert("RGB"))


def test_smooth_deformation_recovered_below_one_pixel(tile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # elastix/transformix must not write files (deformationField.nii, logs) here
    amp, period = 4.0, 160.0
    # cross-stain, as in real use: the moving image is IHC-coloured (hematoxylin kept, DAB from eosin)
    moving = synthetic.ihc_like(synthetic.deform(tile, tile.shape[:2], None, amplitude=amp, period=period))
    ux, uy = synthetic.sinusoidal_field(tile.shape[:2], amp, period)  # moving(q) = tile(q + u(q))
    res = register(grey_channel(tile), grey_channel(moving),
                   FineParams(affine_iterations=48, bspline_iterations=96, grid_spacing=24, resolutions=2))
    # elastix maps fixed p to moving p + D(p); the truth is p - u(p) (first order; u is smooth and small)
    h, w = tile.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    # exact truth: solve q + u(q) = p by fixed-point iteration
    qx, qy = xx.copy(), yy.copy()
    a = amp / np.sqrt(2)
    for _ in range(30):
        qx = xx - a * np.sin(2 * np.pi * qy / period + 0.3)
        qy = yy - a * np.cos(2 * np.pi * qx / period - 0.3)
    tre = np.hypot(xx + res.field[..., 0] - qx, yy + res.field[..., 1] - qy)
    inner = (slice(16, -16), slice(16, -16))
    before = np.hypot(qx - xx, qy - yy)[inner].mean()
    assert before > 2.0
    assert tre[inner].mean() < 1.0, f"mean TRE {tre[inner].mean():.3f} px (before {before:.2f})"
    # transformix per channel: the registered RGB matches the fixed image far better than the moving one
    warped = apply_to_rgb(moving, res.transform)
    assert warped.dtype == np.uint8 and warped.shape == tile.shape
    target = synthetic.ihc_like(tile)
    err_after = np.abs(warped.astype(float) - target)[inner].mean()
    err_before = np.abs(moving.astype(float) - target)[inner].mean()
    assert err_after < 0.4 * err_before
    assert list(tmp_path.iterdir()) == []


def test_register_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        register(np.zeros((8, 8), np.float32), np.zeros((8, 9), np.float32), FineParams())
