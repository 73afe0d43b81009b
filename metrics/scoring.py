"""Per-pair scoring (PSNR, SSIM, DAB stain metrics), in one process or spread over CPU cores.

Each pair is scored independently by :func:`score_pair` (read both PNGs, then the scikit-image calls of
:mod:`metrics.image_quality` and :mod:`metrics.stain`), so the parallel path returns exactly the numbers of a serial
loop. Parallelism: ``concurrent.futures.ProcessPoolExecutor`` over pairs, in chunks, with a ``spawn`` context (safe when
torch or other threaded libraries are loaded in the parent) and BLAS/OpenMP pools limited to one thread per worker
(``threadpoolctl``, when installed) so that workers do not oversubscribe the cores.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from metrics.image_quality import psnr, ssim
from metrics.pairing import Pair
from metrics.stain import DAB_THRESHOLD_OD, dab_stats
from util.image_io import read_rgb_uint8

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


def score_pair(pair: Pair, dab_threshold: float = DAB_THRESHOLD_OD, stain: bool = True) -> PairScore:
    """Read and score one pair.

    Raises:
        util.image_io.ImageReadError: an image cannot be decoded (names the file).
        ValueError: the decoded images differ in shape.
    """
    real = read_rgb_uint8(pair.real)
    fake = read_rgb_uint8(pair.fake)
    if real.shape != fake.shape:
        raise ValueError(f"{pair.real.name} is {real.shape} but {pair.fake.name} is {fake.shape}")
    nan = float("nan")
    sr = dab_stats(real, dab_threshold) if stain else None
    sf = dab_stats(fake, dab_threshold) if stain else None
    return PairScore(
        stem=pair.stem, her2=pair.her2, height=real.shape[0], width=real.shape[1],
        psnr=psnr(real, fake), ssim=ssim(real, fake),
        iod_real=sr.iod if sr else nan, iod_fake=sf.iod if sf else nan,
        dab_pos_real=sr.positive_fraction if sr else nan, dab_pos_fake=sf.positive_fraction if sf else nan,
        dab_mean_od_real=sr.mean_od if sr else nan, dab_mean_od_fake=sf.mean_od if sf else nan,
    )


def _score_safe(args: Tuple[Pair, float, bool]) -> Tuple[Optional[PairScore], Optional[str]]:
    """Worker entry: ``(score, None)`` or ``(None, 'problem line')`` for an unreadable/mismatched pair."""
    pair, thr, stain = args
    try:
        return score_pair(pair, thr, stain), None
    except (OSError, ValueError) as e:
        return None, f"cannot score {pair.stem}: {e}"


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


def _chunksize(n_items: int, workers: int) -> int:
    # about 4 chunks per worker balances the load; at most 16 pairs per chunk keeps the progress bar moving
    return max(1, min(16, n_items // (workers * 4) or 1))


def iter_scores(pairs: Sequence[Pair], num_workers: int = 0, dab_threshold: float = DAB_THRESHOLD_OD,
                stain: bool = True, progress: bool = True, desc: str = "scoring"
                ) -> Iterator[Tuple[Pair, Optional[PairScore], Optional[str]]]:
    """Score ``pairs`` in order, yielding ``(pair, score or None, problem or None)``.

    Args:
        num_workers: processes to use; 0 means all available cores; 1 scores in this process (no pool).
        stain: also compute the DAB metrics (NaN in the result otherwise).
        progress: show a tqdm progress bar.

    Raises:
        ValueError: ``num_workers`` < 0.
    """
    if num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {num_workers}")
    workers = min(num_workers or available_cores(), max(1, len(pairs)))
    tasks = [(p, dab_threshold, stain) for p in pairs]
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


def score_pairs(pairs: Sequence[Pair], num_workers: int = 0, dab_threshold: float = DAB_THRESHOLD_OD,
                stain: bool = True, progress: bool = True) -> Tuple[List[PairScore], List[str]]:
    """Score all ``pairs``; returns ``(scores in input order, problem lines for pairs that could not be scored)``."""
    scores, problems = [], []
    for _, sc, err in iter_scores(pairs, num_workers, dab_threshold, stain, progress):
        if err is not None:
            problems.append(err)
        else:
            scores.append(sc)
    return scores, problems


def image_paths(pairs: Sequence[Pair]) -> Tuple[List[Path], List[Path]]:
    """``(real_B paths, fake_B paths)`` in pair order."""
    return [p.real for p in pairs], [p.fake for p in pairs]
