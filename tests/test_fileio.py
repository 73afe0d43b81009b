"""Atomic writes: complete file or nothing, normal permissions, no temporary left behind."""
import os
import stat

import pytest

from util.fileio import atomic_path, atomic_write_text


def test_written_file_has_umask_mode(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert p.read_text() == "x"


def test_failure_keeps_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "r.png"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]
