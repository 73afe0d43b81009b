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

__all__ = ["KEY_FORMAT", "ANSWERS_FORMAT", "FORMAT_VERSION", "ANSWERS_CSV_COLUMNS", "LEVELS", "parse_versioned_json"]


def parse_versioned_json(path, text: str, fmt: str, what: str, error: type) -> dict:
    """Parse a review file's JSON ``text`` and check its ``"format"`` (``fmt``) and ``"version"``.

    ``what`` names the kind of file in messages (e.g. ``"key"``, ``"answer file"``); ``error`` is the exception class
    raised, with ``path`` named, for invalid JSON, another format or another version.
    """
    import json

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} '{path}' is not valid JSON: {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise error(f"'{path}' is not a review {what} (expected \"format\": \"{fmt}\")")
    if obj.get("version") != FORMAT_VERSION:
        raise error(f"{what} '{path}' has version {obj.get('version')!r}; this tool reads version {FORMAT_VERSION}")
    return obj
