"""Blinded HER2 review kit: the pathologist check of the BCI paper (Liu et al., CVPR-W 2022, Table 5) as a tool.

Protocol: sample real/generated IHC pairs from a ``test.py`` results folder, shuffle all images under anonymous ids,
let pathologists score the HER2 level (0 / 1+ / 2+ / 3+) of every image without knowing which are generated, then
count a generated image as accurate when the reviewer gave it the same level as its real counterpart.

Modules: :mod:`review.sample` (pairs, sampling, the key), :mod:`review.images` (anonymous re-encoding),
:mod:`review.form` (the offline HTML form; :mod:`review.assets` holds its inline CSS/JS), :mod:`review.answers`
(reading and validating answer files), :mod:`review.score` (accuracy, confusion matrices, Cohen's kappa),
:mod:`review.report` (markdown/CSV/JSON output). Command-line tools: ``scripts/review_make_form.py`` and
``scripts/review_score.py``; the workflow is described in ``docs/REVIEW.md``.
"""
from data.her2 import HER2_LEVELS

#: ``format`` field of a key file written by scripts/review_make_form.py.
KEY_FORMAT = "her2-review-key"
#: ``format`` field of the answer JSON saved by the form.
ANSWERS_FORMAT = "her2-review-answers"
#: Version of both file formats.
FORMAT_VERSION = 1
#: Columns of the answer CSV saved by the form, in order.
ANSWERS_CSV_COLUMNS = ("form_id", "reviewer", "image_id", "level")
#: The levels a reviewer can give (BCI / ASCO-CAP HER2 IHC scores).
LEVELS = HER2_LEVELS

__all__ = ["KEY_FORMAT", "ANSWERS_FORMAT", "FORMAT_VERSION", "ANSWERS_CSV_COLUMNS", "LEVELS"]
