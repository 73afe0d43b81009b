"""Per-pair scoring (PSNR, SSIM, DAB stain metrics), in one process or spread over CPU cores.

Each pair is scored independently by :func:`score_pair` (read both PNGs, then the scikit-image calls of
:mod:`metrics.image_quality` and :mod:`metrics.stain`), so the parallel path returns exactly the numbers of a serial
loop. Parallelism: ``concurrent.futures.ProcessPoolExecutor`` over pairs, in chunks, with a ``spawn`` context (safe when
torch or other threaded libraries are loaded in the parent) and BLAS/OpenMP pools limited to one thread per worker
(``threadpoolctl``, when installed) so that workers do not oversubscribe the cores.

Worker start-up must stay cheap (a spawned worker imports this module and the parent's ``__main__``): the worker path
(this module, :mod:`metrics.image_quality`, :mod:`metrics.stain`, :mod:`util.image_io`, and ``evaluate.py`` /
:mod:`metrics.pairing` / :mod:`metrics.report` at import) must not import torch or the ``data`` package, which
costs seconds of CPU per worker (tests/test_metrics_scoring.py pins this). Tasks therefore travel as plain tuples of
strings, not :class:`metrics.pairing.Pair` objects.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from metrics.image_quality import psnr, ssim
from metrics.stain import DAB_THRESHOLD_OD, dab_stats
from util.image_io import read_rgb_uint8

if TYPE_CHECKING:  # not at run time: metrics.pairing imports data.her2, whose package imports torch
    from metrics.pairing import Pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairScore:
    """Scores of one pair. PSNR in dB (``inf`` for identical images), SSIM in [-1, 1], IOD in OD * px,
    DAB-positive fractions in [0, 1]; ``_real`` / ``_fake`` for the real_B and generated fake_B image."""

    stem: str
    her2: Optional[str]
    height: int
    width: int
    psnr: float
    ssim: float
    iod_real: float
    iod_fake: float
    dab_pos_real: float
    dab_pos_fake: float
    dab_mean_od_real: float
    dab_mean_od_fake: float
    fake_std: float = float("nan")  # largest per-channel standard deviation of fake_B's pixels (grey levels)


def score_pair(pair: "Pair", dab_threshold: float = DAB_THRESHOLD_OD, stain: bool = True) -> PairScore:
    """Read and score one pair (any object with ``stem``, ``her2``, ``real`` and ``fake`` paths).

    Raises:
        util.image_io.ImageReadError: an image cannot be decoded (names the file).
        ValueError: the decoded images differ in shape.
    """
    return _score_files(pair.stem, pair.her2, Path(pair.real), Path(pair.fake), dab_threshold, stain)


def _score_files(stem: str, her2: Optional[str], real_path: Path, fake_path: Path, dab_threshold: float,
                 stain: bool) -> PairScore:
    real = read_rgb_uint8(real_path)
    fake = read_rgb_uint8(fake_path)
    if real.shape != fake.shape:
        raise ValueError(f"{real_path.name} is {real.shape} but {fake_path.name} is {fake.shape}")
    nan = float("nan")
    sr = dab_stats(real, dab_threshold) if stain else None
    sf = dab_stats(fake, dab_threshold) if stain else None
    return PairScore(
        stem=stem, her2=her2, height=real.shape[0], width=real.shape[1],
        psnr=psnr(real, fake), ssim=ssim(real, fake),
        iod_real=sr.iod if sr else nan, iod_fake=sf.iod if sf else nan,
        dab_pos_real=sr.positive_fraction if sr else nan, dab_pos_fake=sf.positive_fraction if sf else nan,
        dab_mean_od_real=sr.mean_od if sr else nan, dab_mean_od_fake=sf.mean_od if sf else nan,
        fake_std=float(fake.reshape(-1, fake.shape[-1]).std(axis=0).max()),
    )


def _score_safe(task: Tuple[str, Optional[str], str, str, float, bool]
                ) -> Tuple[Optional[PairScore], Optional[str]]:
    """Worker entry for ``(stem, her2, real path, fake path, threshold, stain)``: ``(score, None)`` or
    ``(None, 'problem line')`` for an unreadable/mismatched pair."""
    stem, her2, real, fake, thr, stain = task
    try:
        return _score_files(stem, her2, Path(real), Path(fake), thr, stain), None
    except (OSError, ValueError) as e:
        return None, f"cannot score {stem}: {e}"


def _init_worker() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only affects speed
        return
    threadpool_limits(limits=1)


def available_cores() -> int:
    """CPU cores this process may use (``os.sched_getaffinity`` where available, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


#: With ``num_workers=0`` (auto), sets of fewer pixels than this (eight 1024 x 1024 pairs, about 4 s of serial CPU) are
#: scored in this process: starting two spawn workers costs about 2.3 s CPU (docs/EVALUATION.md, Speed).
AUTO_SERIAL_MAX_PIXELS = 8 * 1024 * 1024


def _chunksize(n_items: int, workers: int) -> int:
    # about 4 chunks per worker balances the load; at most 16 pairs per chunk keeps the progress bar moving
    return max(1, min(16, n_items // (workers * 4) or 1))


def iter_scores(pairs: Sequence["Pair"], num_workers: int = 0, dab_threshold: float = DAB_THRESHOLD_OD,
                stain: bool = True, progress: bool = True, desc: str = "scoring"
                ) -> Iterator[Tuple[Pair, Optional[PairScore], Optional[str]]]:
    """Score ``pairs`` in order, yielding ``(pair, score or None, problem or None)``.

    Args:
        num_workers: processes to use; 0 means all available cores, or this process alone when the pairs hold
            fewer than :data:`AUTO_SERIAL_MAX_PIXELS` pixels (``Pair.size``); 1 scores in this process (no pool).
        stain: also compute the DAB metrics (NaN in the result otherwise).
        progress: show a tqdm progress bar.

    Raises:
        ValueError: ``num_workers`` < 0.
    """
    if num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {num_workers}")
    if num_workers == 0 and sum(p.size[0] * p.size[1] for p in pairs) < AUTO_SERIAL_MAX_PIXELS:
        num_workers = 1
    workers = min(num_workers or available_cores(), max(1, len(pairs)))
    tasks = [(p.stem, p.her2, str(p.real), str(p.fake), dab_threshold, stain) for p in pairs]
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress)
    try:
        if workers == 1:
            results = map(_score_safe, tasks)
            for p, (sc, err) in zip(pairs, results):
                bar.update(1)
                yield p, sc, err
        else:
            log.info("scoring %d pair(s) with %d worker processes", len(tasks), workers)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as ex:
                for p, (sc, err) in zip(pairs, ex.map(_score_safe, tasks, chunksize=_chunksize(len(tasks), workers))):
                    bar.update(1)
                    yield p, sc, err
    finally:
        bar.close()


def score_pairs(pairs: Sequence["Pair"], num_workers: int = 0, dab_threshold: float = DAB_THRESHOLD_OD,
                stain: bool = True, progress: bool = True) -> Tuple[List[PairScore], List[str]]:
    """Score all ``pairs``; returns ``(scores in input order, problem lines for pairs that could not be scored)``."""
    scores, problems = [], []
    for _, sc, err in iter_scores(pairs, num_workers, dab_threshold, stain, progress):
        if err is not None:
            problems.append(err)
        else:
            scores.append(sc)
    return scores, problems

