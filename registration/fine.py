"""Fine alignment of one block: elastix affine then B-spline registration through itk-elastix, applied per channel.

As in the BCI paper (section 3), elastix (Klein et al., IEEE TMI 29(1), 2010) registers one grey channel (here the
hematoxylin optical density or ``1 - luma``, :mod:`registration.stains`) of the coarse-aligned IHC block (moving) onto
the H&E block (fixed), and the resulting transform is applied to each of the three RGB channels with transformix.

Parameter maps are elastix's defaults (``ParameterObject.GetDefaultParameterMap('affine' | 'bspline', ...)``:
advanced Mattes mutual information, adaptive stochastic gradient descent, multi-resolution Gaussian pyramid) with the
number of resolutions, iterations and the B-spline control-point spacing (pixels of the working grid) set from
:class:`FineParams`. Images are given unit spacing, so every physical quantity (grid spacing, displacements) is in
working-grid pixels. elastix's sampler is seeded with a fixed default, so runs are reproducible.

Displacement convention (elastix/transformix): the deformation field ``D`` maps fixed (H&E) pixel ``p`` to the moving
(coarse IHC) position ``p + D(p)``; ``D[..., 0]`` is x, ``D[..., 1]`` is y.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class FineParams:
    """elastix settings for one block.

    Attributes:
        affine_iterations: ``MaximumNumberOfIterations`` of the affine stage, per resolution (0 skips the stage).
        bspline_iterations: ``MaximumNumberOfIterations`` of the B-spline stage, per resolution (0 skips it).
        grid_spacing: B-spline control-point spacing at the finest resolution (``FinalGridSpacingInPhysicalUnits``),
            working-grid pixels.
        resolutions: number of pyramid levels; ``None`` chooses ``clip(floor(log2(min side / 32)), 1, 4)``.
        spatial_samples: ``NumberOfSpatialSamples`` per iteration (random coordinates).
    """

    affine_iterations: int = 256
    bspline_iterations: int = 256
    grid_spacing: float = 64.0
    resolutions: Optional[int] = None
    spatial_samples: int = 2048

    def n_resolutions(self, shape) -> int:
        if self.resolutions is not None:
            return int(self.resolutions)
        return int(np.clip(math.floor(math.log2(max(min(shape), 32) / 32)), 1, 4))


@dataclass
class FineResult:
    """Output of :func:`register`.

    Attributes:
        transform: elastix's result ``itk.ParameterObject`` (input to :func:`apply_to_rgb`).
        field: ``(H, W, 2)`` float32 displacement field in pixels (x, y), fixed -> moving (see module docstring).
        seconds: wall time of the registration.
    """

    transform: Any
    field: np.ndarray
    seconds: float


def _itk():
    try:
        import itk  # noqa: F401 - heavy import, only when fine registration runs
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fine registration needs itk-elastix: pip install itk-elastix==0.25.4") from e
    return itk


def parameter_object(params: FineParams, shape) -> Any:
    """The ``itk.ParameterObject`` (affine then B-spline maps) for a block of ``shape`` (H, W)."""
    itk = _itk()
    po = itk.ParameterObject.New()
    nres = params.n_resolutions(shape)
    stages = []
    if params.affine_iterations > 0:
        stages.append(("affine", po.GetDefaultParameterMap("affine", nres), params.affine_iterations))
    if params.bspline_iterations > 0:
        stages.append(("bspline", po.GetDefaultParameterMap("bspline", nres, float(params.grid_spacing)),
                       params.bspline_iterations))
    if not stages:
        raise ValueError("both elastix stages have 0 iterations; set affine_iterations or bspline_iterations > 0")
    for _, pm, iters in stages:
        pm["MaximumNumberOfIterations"] = [str(int(iters))]
        pm["NumberOfSpatialSamples"] = [str(int(params.spatial_samples))]
        pm["WriteResultImage"] = ["false"]
        po.AddParameterMap(pm)
    return po


def register(fixed: np.ndarray, moving: np.ndarray, params: FineParams) -> FineResult:
    """Register ``moving`` onto ``fixed`` with elastix (affine then B-spline).

    Args:
        fixed: ``(H, W)`` float32 channel of the H&E block (higher = more stain).
        moving: ``(H, W)`` float32 channel of the coarse-aligned IHC block, same shape.
        params: :class:`FineParams`.

    Returns:
        :class:`FineResult`.

    Raises:
        ValueError: shapes differ or are not 2-D.
        RuntimeError: elastix failed (e.g. too few samples inside the images); the caller keeps the coarse result.
    """
    if fixed.ndim != 2 or fixed.shape != moving.shape:
        raise ValueError(f"fixed and moving must be 2-D arrays of one shape, got {fixed.shape} and {moving.shape}")
    itk = _itk()
    t = time.perf_counter()
    f_img = itk.GetImageFromArray(np.ascontiguousarray(fixed, np.float32))
    m_img = itk.GetImageFromArray(np.ascontiguousarray(moving, np.float32))
    po = parameter_object(params, fixed.shape)
    _, tp = itk.elastix_registration_method(f_img, m_img, parameter_object=po, log_to_console=False)
    # transformix writes deformationField.nii into its output directory, which defaults to the current one
    # (itk.transformix_deformation_field gives no way to change it): use a private temporary folder instead
    with tempfile.TemporaryDirectory(prefix="transformix.") as tmp:
        tf = itk.TransformixFilter.New(m_img, transform_parameter_object=tp)
        tf.SetComputeDeformationField(True)
        tf.SetOutputDirectory(tmp)
        tf.SetLogToConsole(False)
        tf.UpdateLargestPossibleRegion()
        field = np.asarray(tf.GetOutputDeformationField(), np.float32).copy()
    return FineResult(transform=tp, field=field, seconds=time.perf_counter() - t)


def apply_to_rgb(rgb: np.ndarray, transform: Any, fill: float = 255.0) -> np.ndarray:
    """Warp each channel of the moving RGB block with transformix (cubic B-spline interpolation).

    Args:
        rgb: ``(H, W, 3)`` uint8 moving block (same grid as the registration's moving image).
        transform: :attr:`FineResult.transform`.
        fill: value of pixels mapped from outside the block (``DefaultPixelValue``).

    Returns:
        ``(H, W, 3)`` uint8, clipped to [0, 255].
    """
    itk = _itk()
    tp = itk.ParameterObject.New()
    n = transform.GetNumberOfParameterMaps()
    for i in range(n):
        pm = transform.GetParameterMap(i)
        if i == n - 1:
            pm["DefaultPixelValue"] = [str(float(fill))]
            pm["FinalBSplineInterpolationOrder"] = ["3"]
            pm["ResultImagePixelType"] = ["float"]
        tp.AddParameterMap(pm)
    out = np.empty_like(rgb)
    for c in range(rgb.shape[2]):
        img = itk.GetImageFromArray(np.ascontiguousarray(rgb[..., c], np.float32))
        res = np.asarray(itk.transformix_filter(img, tp, log_to_console=False))
        out[..., c] = np.clip(np.rint(res), 0, 255).astype(np.uint8)
    return out
