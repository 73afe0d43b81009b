"""Evaluation metrics for virtual IHC staining (functional cores used by ``evaluate.py``).

- :mod:`metrics.image_quality`: PSNR / SSIM with scikit-image, BCI protocol.
- :mod:`metrics.stain`: DAB optical density by colour deconvolution, IOD, DAB-positive area, agreement statistics.
- :mod:`metrics.distribution`: Fréchet distance, KID (unbiased MMD^2, cubic kernel), pytorch-fid Inception features.
- :mod:`metrics.pairing`: strict fake_B / real_B pairing of a results folder.
- :mod:`metrics.scoring`: per-pair scoring, serial or over CPU cores.
- :mod:`metrics.report`: summaries and the CSV / Markdown / JSON outputs.

Submodules are not imported here, so worker processes load only what they need.
"""
