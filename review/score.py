"""Scores of a blinded HER2 review (BCI paper, Liu et al. 2022, Table 5 protocol) and inter-reviewer agreement.

Per reviewer, for each pair (real image r, generated image g of the same stem):

* accurate  <=>  level given to g == level given to r (the reviewer's own reading of the real stain is the reference);
  accuracy = accurate pairs / pairs (a fraction in [0, 1]).
* confusion matrix C[i][j] = number of pairs whose real image got level LEVELS[i] and generated image LEVELS[j]
  (rows: real, columns: generated; the diagonal holds the accurate pairs).
* accuracy per level, grouped by the level the reviewer gave the real image (row-wise diagonal share of C) and by the
  level in the file name (the dataset's label; ``'unknown'`` when a name carries none).
* agreement of the reviewer with the file-name level, separately for real and for generated images.

Between two reviewers: Cohen's kappa (``sklearn.metrics.cohen_kappa_score``, labels 0 < 1+ < 2+ < 3+) unweighted and
quadratic-weighted, and the raw share of identical levels, on all images both scored (every image of the form: the
answer files are complete) and on the real and generated images separately. Kappa is ``None`` where it is undefined
(both reviewers gave one and the same level to every image).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score

from review import LEVELS
from review.answers import Answers

_INDEX = {lvl: i for i, lvl in enumerate(LEVELS)}


def key_pairs(key: Mapping) -> List[dict]:
    """``[{"pair": stem, "real": id, "generated": id, "level": name level or None}]`` sorted by stem."""
    pairs: Dict[str, dict] = {}
    for im in key["images"]:
        p = pairs.setdefault(im["pair"], {"pair": im["pair"], "level": im["level"]})
        p[im["kind"]] = im["id"]
    return [pairs[s] for s in sorted(pairs)]


def _share(k: int, n: int) -> dict:
    return {"n": n, "accurate": k, "accuracy": (k / n) if n else None}


def score_reviewer(answers: Answers, key: Mapping) -> dict:
    """Table 5 scores of one reviewer (fields described in the module docstring).

    Returns:
        ``{"reviewer", "file", "n_pairs", "n_accurate", "accuracy", "confusion" (4x4 ints, rows real / columns
        generated, in LEVELS order), "by_given_level" {level: {n, accurate, accuracy}}, "by_name_level" {level or
        'unknown': {...}}, "real_vs_name" {n, accurate, accuracy}, "generated_vs_name" {...}}``; ``accuracy`` is
        ``None`` for empty groups.
    """
    lv = answers.levels
    pairs = key_pairs(key)
    conf = [[0] * len(LEVELS) for _ in LEVELS]
    by_name: Dict[str, List[int]] = {}
    real_name = [0, 0]
    gen_name = [0, 0]
    for p in pairs:
        r, g = lv[p["real"]], lv[p["generated"]]
        conf[_INDEX[r]][_INDEX[g]] += 1
        group = p["level"] if p["level"] is not None else "unknown"
        acc = by_name.setdefault(group, [0, 0])
        acc[0] += int(r == g)
        acc[1] += 1
        if p["level"] is not None:
            real_name[0] += int(r == p["level"])
            gen_name[0] += int(g == p["level"])
            real_name[1] += 1
            gen_name[1] += 1
    n_acc = sum(conf[i][i] for i in range(len(LEVELS)))
    name_order = [lvl for lvl in LEVELS if lvl in by_name] + (["unknown"] if "unknown" in by_name else [])
    return {
        "reviewer": answers.reviewer,
        "file": str(answers.path),
        "n_pairs": len(pairs),
        "n_accurate": n_acc,
        "accuracy": n_acc / len(pairs) if pairs else None,
        "confusion": conf,
        "by_given_level": {lvl: _share(conf[i][i], sum(conf[i])) for i, lvl in enumerate(LEVELS)},
        "by_name_level": {g: _share(*by_name[g]) for g in name_order},
        "real_vs_name": _share(*real_name),
        "generated_vs_name": _share(*gen_name),
    }


def kappa(a: Sequence[str], b: Sequence[str], weights: Optional[str] = None) -> Optional[float]:
    """Cohen's kappa of two level sequences (``sklearn.metrics.cohen_kappa_score`` with the 4 ordered levels).

    Args:
        weights: ``None`` (unweighted), ``'linear'`` or ``'quadratic'``.

    Returns:
        kappa in [-1, 1], or ``None`` when undefined (expected agreement 1: both raters used one identical level).
    """
    ya = [_INDEX[x] for x in a]
    yb = [_INDEX[x] for x in b]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        k = cohen_kappa_score(ya, yb, labels=list(range(len(LEVELS))), weights=weights)
    k = float(k)
    return None if math.isnan(k) else k


def agreement(a: Answers, b: Answers, key: Mapping) -> dict:
    """Agreement between two reviewers on all images both scored, and on real / generated images separately.

    Returns:
        ``{"reviewer_a", "reviewer_b", "n_images", "percent_agreement" (fraction in [0, 1]), "kappa",
        "kappa_quadratic", "kappa_real", "kappa_generated"}``.
    """
    ids = [im["id"] for im in key["images"] if im["id"] in a.levels and im["id"] in b.levels]
    kind = {im["id"]: im["kind"] for im in key["images"]}
    la, lb = [a.levels[i] for i in ids], [b.levels[i] for i in ids]

    def sub(k):
        sel = [i for i in ids if kind[i] == k]
        return kappa([a.levels[i] for i in sel], [b.levels[i] for i in sel]) if sel else None

    return {
        "reviewer_a": a.reviewer,
        "reviewer_b": b.reviewer,
        "n_images": len(ids),
        "percent_agreement": (sum(x == y for x, y in zip(la, lb)) / len(ids)) if ids else None,
        "kappa": kappa(la, lb) if ids else None,
        "kappa_quadratic": kappa(la, lb, "quadratic") if ids else None,
        "kappa_real": sub("real"),
        "kappa_generated": sub("generated"),
    }


def score_round(all_answers: Sequence[Answers], key: Mapping) -> dict:
    """Scores of every reviewer, their mean accuracy, and pairwise agreement (all unordered reviewer pairs).

    Returns:
        ``{"form_id", "n_pairs", "levels", "reviewers": [score_reviewer...], "mean_accuracy",
        "agreement": [agreement...]}``.
    """
    reviewers = [score_reviewer(a, key) for a in all_answers]
    accs = [r["accuracy"] for r in reviewers if r["accuracy"] is not None]
    return {
        "form_id": key["form_id"],
        "n_pairs": len(key_pairs(key)),
        "levels": list(LEVELS),
        "reviewers": reviewers,
        "mean_accuracy": sum(accs) / len(accs) if accs else None,
        "agreement": [agreement(x, y, key) for x, y in itertools.combinations(all_answers, 2)],
    }
