"""Building BCI-like H&E/IHC pairs from a pair of restained slides (BCI paper, Liu et al., CVPR-W 2022, section 3).

Stages, one module each:

* :mod:`registration.points` - the CSV of manually chosen corresponding points (level-0 pixels of both slides);
* :mod:`registration.coarse` - the projective (homography) transform from those points (scikit-image);
* :mod:`registration.sampling` - reading a slide resampled onto any projective output grid, tile by tile;
* :mod:`registration.stains` - the single grey / hematoxylin channel registration and scoring work on;
* :mod:`registration.fine` - elastix affine + B-spline registration of one block (itk-elastix), transformix per channel;
* :mod:`registration.blocks` - the block grid and the seamless, disk-backed mosaic of registered blocks;
* :mod:`registration.patches` - cutting, filtering (tissue, coverage, alignment score) and writing the BCI layout;
* :mod:`registration.report` - overlays, score histogram and the HTML report;
* :mod:`registration.pipeline` - the whole run (used by ``scripts/build_pairs.py``).

See ``docs/REGISTRATION.md``. Nothing here runs at import; itk is imported only when fine registration runs.
"""
