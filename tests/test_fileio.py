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


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_umask_read_without_changing_it(tmp_path, monkeypatch):
    """Setting the umask to 0 even briefly lets files created meanwhile by other threads get mode 0666/0777; on Linux
    the mode must be computed without calling os.umask, and follow a non-default umask exactly."""
    old = os.umask(0o027)
    try:
        def no_umask(_):
            raise AssertionError("os.umask called while writing")

        monkeypatch.setattr(os, "umask", no_umask)
        p = atomic_write_text(tmp_path / "b.txt", "y")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_run_cli_turns_user_and_os_errors_into_one_line(capsys):
    from util.errors import OptionError
    from util.logging_setup import run_cli

    def raises(exc):
        def body(argv):
            raise exc
        return body

    assert run_cli(lambda argv: None, []) == 0 and run_cli(lambda argv: 3, []) == 3
    assert run_cli(raises(OptionError("--netG 'x' unknown")), [], prog="train.py") == 2
    assert capsys.readouterr().err == "train.py: error: --netG 'x' unknown\n"
    assert run_cli(raises(PermissionError(13, "Permission denied", "/ro/out.png")), []) == 2
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: '/ro/out.png'\n"
    with pytest.raises(ValueError):  # a bug keeps its traceback
        run_cli(raises(ValueError("bug")), [])
