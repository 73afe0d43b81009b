"""Whole-slide virtual staining: read a slide, find tissue, run the generator on overlapping tiles, blend them
seamlessly and write a pyramidal BigTIFF (see docs/WSI.md).

Modules: ``reader`` (open_slide / SlideReader), ``tissue`` (tissue mask), ``tiling`` (tile grid and blending window),
``writer`` (pyramidal tiled TIFF, thumbnail, HTML), ``pipeline`` (the whole run).
"""
