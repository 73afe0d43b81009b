"""First-hour items: progress lines without a terminal, --num_threads default, option dump only with --verbose."""
import logging

import pytest

from options import base_options
from util.progress import ProgressReporter


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_lines_every_interval_with_rate_and_time_left(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    rep = ProgressReporter(1, 3, batches_per_epoch=10, interval=30, enabled=True, clock=clock)
    lines = []
    for i in range(10):  # epoch 1: 10 batches of 2 images, 10 s each
        clock.t += 10
        lines.append(rep.update(1, i, 2))
    emitted = [ln for ln in lines if ln]
    assert [i for i, ln in enumerate(lines) if ln] == [2, 5, 8]  # at 30, 60, 90 s
    # at 30 s: 3 batches of 6 images in 30 s = 0.2 images/s; 10 s per batch; 7 left in the epoch, +20 after
    assert emitted[0] == ("epoch 1/3: 30% (3/10 batches), 0.2 images/s, epoch left 0:01:10, "
                          "training left 0:04:30")
    assert emitted[0] in caplog.text


def test_progress_disabled_on_a_terminal_or_with_interval_zero(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert not ProgressReporter(1, 1, 5, 1).enabled
    assert not ProgressReporter(1, 1, 5, 0, enabled=True).enabled
    with pytest.raises(ValueError):
        ProgressReporter(1, 1, 5, -1)


def test_num_threads_default_is_at_most_the_cores(monkeypatch):
    monkeypatch.setattr(base_options.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert base_options.default_num_threads() == 2
    monkeypatch.setattr(base_options.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert base_options.default_num_threads() == 4
    import argparse

    p = base_options.add_base_options(argparse.ArgumentParser())
    assert p.get_default("num_threads") == 4


def test_training_without_terminal_shows_progress_not_the_option_dump(sample_bci, tmp_path, capsys):
    import train
    from tests.conftest import train_args

    args = train_args(sample_bci, tmp_path / "ck", extra=("--progress_interval", "1e-9"))
    assert train.main(args) == 0
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    assert "images/s" in err and "training left" in err
    assert "----------------- Options" not in err and "train_opt.txt" in err
    assert "----------------- Options" in (tmp_path / "ck" / "run" / "train_opt.txt").read_text()
    assert train.main(args + ["--verbose", "--name", "run2"]) == 0
    assert "----------------- Options" in capsys.readouterr().err
