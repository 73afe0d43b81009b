"""metrics.scoring: cheap worker start-up (no torch on the worker path) and parallel == serial, exactly."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from metrics.pairing import pair_images
from metrics.scoring import iter_scores, score_pairs

LEVELS = ["0", "1+", "2+", "3+"]


def test_worker_path_does_not_import_torch_or_data():
    # a spawned worker imports metrics.scoring and re-imports the parent's __main__ (evaluate.py or the benchmark);
    # torch alone costs seconds of CPU per worker, which made the process pool slower than a serial loop
    code = ("import sys, evaluate, metrics.scoring, metrics.report, metrics.pairing, metrics.stain, "
            "metrics.image_quality, util.image_io, scripts.bench_evaluate\n"
            "bad = sorted(m for m in ('torch', 'torchvision', 'data') if m in sys.modules)\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _pairs(tmp_path, n=3, size=(19, 23)):
    rng = np.random.default_rng(3)
    base = np.asarray(Image.open("samples/ihc.png").convert("RGB"))
    for i in range(n):
        real = np.ascontiguousarray(base[5 * i:5 * i + size[0], 3 * i:3 * i + size[1]])
        fake = np.clip(real + rng.normal(0, 12, real.shape), 0, 255).astype(np.uint8)
        Image.fromarray(real).save(tmp_path / f"{i:05d}_test_{LEVELS[i]}_real_B.png")
        Image.fromarray(fake).save(tmp_path / f"{i:05d}_test_{LEVELS[i]}_fake_B.png")
    (tmp_path / "00009_test_0_real_B.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt pair
    Image.fromarray(np.zeros((19, 23, 3), np.uint8)).save(tmp_path / "00009_test_0_fake_B.png")
    return pair_images(tmp_path).pairs + [_corrupt_pair(tmp_path)]


def _corrupt_pair(tmp_path):
    from metrics.pairing import Pair

    return Pair("00009_test_0", tmp_path / "00009_test_0_real_B.png", tmp_path / "00009_test_0_fake_B.png", "0",
                (19, 23))


def test_process_pool_equals_serial_and_reports_unreadable(tmp_path):
    pairs = _pairs(tmp_path)
    serial = score_pairs(pairs, num_workers=1, progress=False)
    pooled = list(iter_scores(pairs, num_workers=2, progress=False))  # one pool: worker start-up is the slow part
    assert [p for p, _, _ in pooled] == pairs  # input order
    assert ([s for _, s, _ in pooled if s is not None], [e for _, _, e in pooled if e is not None]) == serial
    scores, problems = serial  # same dataclasses, bit-identical floats, same problem lines
    assert [s.stem for s in scores] == [p.stem for p in pairs[:-1]]
    assert [s.her2 for s in scores] == LEVELS[:3]
    assert len(problems) == 1 and "00009_test_0" in problems[0] and "00009_test_0_real_B.png" in problems[0]


def test_auto_workers_score_small_sets_in_process(tmp_path, monkeypatch):
    # two spawn workers cost ~2 s CPU to start: a few small images are faster scored in this process
    import metrics.scoring as scoring

    class NoPool:
        def __init__(self, *a, **k):
            raise AssertionError("a process pool was started for a tiny set")

    pairs = _pairs(tmp_path)[:2]
    monkeypatch.setattr(scoring, "ProcessPoolExecutor", NoPool)
    assert len(score_pairs(pairs, num_workers=0, progress=False)[0]) == 2
    with pytest.raises(AssertionError, match="process pool"):  # an explicit worker count is honoured
        score_pairs(pairs, num_workers=2, progress=False)
    big = [dataclasses.replace(p, size=(4096, 4096)) for p in pairs]
    with pytest.raises(AssertionError, match="process pool"):  # auto uses the cores for large images
        score_pairs(big, num_workers=0, progress=False)
