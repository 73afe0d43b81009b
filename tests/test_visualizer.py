"""util/visualizer.py: HTML page and loss log, rank gating, and visdom behaviour (off, unreachable, real server)."""
from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from util.visualizer import Visualizer

VIS_LOGGER = "util.visualizer"


def _opt(tmp_path, **kw):
    base = dict(name="exp", checkpoints_dir=str(tmp_path / "ckpt"), isTrain=True, display_id=0,
                display_server="http://127.0.0.1", display_port=8097, display_env="test_env", display_winsize=64,
                display_ncols=2, no_html=False)
    base.update(kw)
    return SimpleNamespace(**base)


def _visuals(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "real_A": torch.rand(2, 3, 9, 13, generator=g) * 2 - 1,   # odd sizes, batch of 2 (first one is saved)
        "fake_B": torch.rand(1, 3, 9, 13, generator=g) * 2.4 - 1.2,  # values outside [-1, 1] are clipped
        "real_B": torch.rand(1, 1, 9, 13, generator=g) * 2 - 1,   # grey visual becomes RGB
    }


def _expected_u8(t: torch.Tensor) -> np.ndarray:
    """Independent reference: first image, clip to [-1, 1], (x + 1) * 127.5 rounded, CHW -> HWC, grey -> RGB."""
    a = np.clip(t[0].numpy().astype(np.float64), -1, 1)
    a = np.rint((a + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self._in_h3 = False

    def handle_starttag(self, tag, attrs):
        if tag == "h3":
            self._in_h3 = True
        elif tag == "img":
            self.events.append(("img", dict(attrs)["src"]))

    def handle_endtag(self, tag):
        if tag == "h3":
            self._in_h3 = False

    def handle_data(self, data):
        if self._in_h3:
            self.events.append(("h3", data.strip()))


def _visualizer_warnings(caplog):
    return [r for r in caplog.records if r.name == VIS_LOGGER and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------- files


def test_html_page_and_images(tmp_path):
    vz = Visualizer(_opt(tmp_path))
    v1, v2 = _visuals(1), _visuals(2)
    vz.display_current_results(v1, epoch=1, save_result=True)
    vz.display_current_results(v2, epoch=2, save_result=True)
    vz.display_current_results(_visuals(3), epoch=3, save_result=False)  # not saved: not the first call

    img_dir = tmp_path / "ckpt" / "exp" / "web" / "images"
    for epoch, vis in ((1, v1), (2, v2)):
        for label, t in vis.items():
            f = img_dir / f"epoch{epoch:03d}_{label}.png"
            with Image.open(f) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (13, 9)
                np.testing.assert_array_equal(np.asarray(im), _expected_u8(t))
    assert not list(img_dir.glob("epoch003_*"))

    index = tmp_path / "ckpt" / "exp" / "web" / "index.html"
    p = _Page()
    p.feed(index.read_text(encoding="utf-8"))
    assert p.events == [
        ("h3", "epoch [2]"),
        ("img", "images/epoch002_real_A.png"), ("img", "images/epoch002_fake_B.png"),
        ("img", "images/epoch002_real_B.png"),
        ("h3", "epoch [1]"),
        ("img", "images/epoch001_real_A.png"), ("img", "images/epoch001_fake_B.png"),
        ("img", "images/epoch001_real_B.png"),
    ]
    for kind, src in p.events:
        if kind == "img":
            assert (index.parent / unquote(src)).is_file()

    vz.reset()  # the next call saves again even with save_result=False
    vz.display_current_results(_visuals(4), epoch=4, save_result=False)
    assert len(list(img_dir.glob("epoch004_*.png"))) == 3
    assert "epoch [4]" in index.read_text(encoding="utf-8")
    assert not [f for f in index.parent.rglob("*") if ".partial" in f.name]


def test_no_html_writes_no_page(tmp_path):
    vz = Visualizer(_opt(tmp_path, no_html=True))
    vz.display_current_results(_visuals(), epoch=1, save_result=True)
    assert not (tmp_path / "ckpt" / "exp" / "web").exists()
    assert (tmp_path / "ckpt" / "exp" / "loss_log.txt").is_file()


def test_bad_visuals_raise(tmp_path):
    vz = Visualizer(_opt(tmp_path))
    with pytest.raises(TypeError, match="tensor"):
        vz.display_current_results({"real_A": np.zeros((1, 3, 4, 4))}, 1, True)
    with pytest.raises(ValueError):
        vz.display_current_results({"real_A": torch.zeros(1, 2, 4, 4)}, 1, True)
    with pytest.raises(ValueError, match="label"):
        vz.display_current_results({"../x": torch.zeros(1, 3, 4, 4)}, 1, True)


def test_loss_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=VIS_LOGGER)
    vz = Visualizer(_opt(tmp_path))
    msg = vz.print_current_losses(3, 40, {"G_GAN": 0.69314, "G_L1": torch.tensor(12.5), "D_real": 1}, 0.1254, 0.0101)
    assert msg == "(epoch: 3, iters: 40, time: 0.125, data: 0.010) G_GAN: 0.693 G_L1: 12.500 D_real: 1.000 "
    assert any(r.getMessage() == msg for r in caplog.records)
    vz2 = Visualizer(_opt(tmp_path))  # a second run appends its own header
    vz2.print_current_losses(4, 8, {"G_GAN": 2.0}, 0.0, 0.0)
    lines = (tmp_path / "ckpt" / "exp" / "loss_log.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    year = time.strftime("%Y")
    assert re.fullmatch(rf"=+ Training Loss \(.*{year}.*\) =+", lines[0])
    assert lines[1] == msg
    assert re.fullmatch(r"=+ Training Loss \(.*\) =+", lines[2])
    assert lines[3].startswith("(epoch: 4, iters: 8,") and "G_GAN: 2.000" in lines[3]


def test_other_ranks_do_nothing(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("rank != 0 must not open connections")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    vz = Visualizer(_opt(tmp_path, rank=1, display_id=1))
    vz.display_current_results(_visuals(), 1, True)
    vz.plot_current_losses(1, 0.5, {"G": 1.0})
    assert vz.print_current_losses(1, 1, {"G": 1.0}, 0.0, 0.0).startswith("(epoch: 1,")
    vz.close()
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------------------- visdom off


def test_display_id_0_makes_no_network_call(tmp_path, monkeypatch, caplog):
    def fail(*a, **k):
        raise AssertionError("--display_id 0 must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", fail)
    monkeypatch.setattr(socket.socket, "connect_ex", fail)
    monkeypatch.setattr(socket, "create_connection", fail)
    monkeypatch.setitem(sys.modules, "visdom", None)  # any `import visdom` would raise ImportError -> a warning
    vz = Visualizer(_opt(tmp_path, display_id=0))
    vz.display_current_results(_visuals(), 1, True)
    vz.plot_current_losses(1, 0.5, {"G_GAN": 1.0})
    vz.print_current_losses(1, 1, {"G_GAN": 1.0}, 0.0, 0.0)
    vz.close()
    assert vz.vis is None
    assert _visualizer_warnings(caplog) == []


def test_missing_visdom_package_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "visdom", None)
    vz = Visualizer(_opt(tmp_path, display_id=1, display_port=_free_port()))
    vz.plot_current_losses(1, 0.5, {"G_GAN": 1.0})
    vz.display_current_results(_visuals(), 1, True)
    warns = _visualizer_warnings(caplog)
    assert len(warns) == 1 and "scripts/install_visdom.sh" in warns[0].getMessage()
    assert vz.vis is None


def _assert_silent_and_fast(vz, caplog, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("visdom is off: no further connection attempts")

    monkeypatch.setattr(socket.socket, "connect", fail)
    t0 = time.monotonic()
    for i in range(3):
        vz.plot_current_losses(1, i / 3, {"G_GAN": 1.0})
        vz.display_current_results(_visuals(), 1, False)
    assert time.monotonic() - t0 < 2.0
    assert len(_visualizer_warnings(caplog)) == 1


def test_unreachable_server_warns_once(tmp_path, monkeypatch, caplog):
    pytest.importorskip("visdom", reason="visdom not installed (scripts/install_visdom.sh)")
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    vz = Visualizer(_opt(tmp_path, display_id=1, display_port=port))
    assert time.monotonic() - t0 < 5.0
    warns = _visualizer_warnings(caplog)
    assert len(warns) == 1 and str(port) in warns[0].getMessage()
    assert vz.vis is None
    _assert_silent_and_fast(vz, caplog, monkeypatch)


def test_silent_listener_does_not_hang(tmp_path, monkeypatch, caplog):
    """A port that accepts TCP connections but never answers HTTP: one warning, bounded time."""
    pytest.importorskip("visdom", reason="visdom not installed (scripts/install_visdom.sh)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        t0 = time.monotonic()
        vz = Visualizer(_opt(tmp_path, display_id=1, display_port=srv.getsockname()[1]))
        assert time.monotonic() - t0 < 8.0
    assert len(_visualizer_warnings(caplog)) == 1 and vz.vis is None
    _assert_silent_and_fast(vz, caplog, monkeypatch)


# ---------------------------------------------------------------------------------------------- real server


@pytest.fixture
def visdom_server(tmp_path):
    pytest.importorskip("visdom", reason="visdom not installed: run scripts/install_visdom.sh")
    port = _free_port()
    env_path = tmp_path / "visdom_env"
    env_path.mkdir()
    logf = open(tmp_path / "visdom_server.log", "wb")
    # run_server.main() parses sys.argv and, unlike `python -m visdom.server`, does not download web assets
    proc = subprocess.Popen(
        [sys.executable, "-c", "from visdom.server.run_server import main; main()",
         "-port", str(port), "--hostname", "127.0.0.1", "-bind_local", "-env_path", str(env_path),
         "-logging_level", "WARNING"],
        stdout=logf, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail("visdom server exited: " + (tmp_path / "visdom_server.log").read_text(errors="replace"))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("visdom server did not listen within 30 s")
                time.sleep(0.1)
        yield SimpleNamespace(port=port, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        logf.close()


def test_real_visdom_server_receives_plots(tmp_path, visdom_server, caplog, monkeypatch):
    import visdom

    opt = _opt(tmp_path, display_id=5, display_port=visdom_server.port, display_env="bci_test")
    vz = Visualizer(opt)
    assert vz.vis is not None, [r.getMessage() for r in caplog.records]
    points = [(1, 0.25, {"G_GAN": 0.7, "G_L1": 11.0}), (1, 0.5, {"G_GAN": 0.6, "G_L1": 9.5}),
              (2, 0.0, {"G_GAN": 0.5, "G_L1": 8.25})]
    for epoch, ratio, losses in points:
        vz.plot_current_losses(epoch, ratio, losses)
    vz.display_current_results(_visuals(), epoch=1, save_result=True)

    # query the server with an independent client
    client = visdom.Visdom(server="http://127.0.0.1", port=visdom_server.port, env="bci_test",
                           raise_exceptions=True, use_incoming_socket=False)
    data = json.loads(client.get_window_data(vz.loss_win, env="bci_test"))
    series = {d["name"]: (d["x"], d["y"]) for d in data["content"]["data"]}
    assert set(series) == {"G_GAN", "G_L1"}
    xs = [1.25, 1.5, 2.0]
    np.testing.assert_allclose(series["G_GAN"][0], xs)
    np.testing.assert_allclose(series["G_GAN"][1], [0.7, 0.6, 0.5])
    np.testing.assert_allclose(series["G_L1"][0], xs)
    np.testing.assert_allclose(series["G_L1"][1], [11.0, 9.5, 8.25])
    assert vz.loss_win == "5" and vz.images_win == "6" and vz.labels_win == "7"
    assert client.win_exists(vz.images_win, env="bci_test") is True
    assert json.loads(client.get_window_data(vz.images_win, env="bci_test"))["type"] == "image"
    labels = json.loads(client.get_window_data(vz.labels_win, env="bci_test"))
    assert labels["type"] == "text" and all(k in labels["content"] for k in ("real_A", "fake_B", "real_B"))
    assert client.win_exists("no_such_window", env="bci_test") is False
    assert _visualizer_warnings(caplog) == []

    # --display_ncols 0: one window per visual, ids display_id + 1 + i
    vz0 = Visualizer(_opt(tmp_path, name="exp0", display_id=10, display_ncols=0, display_port=visdom_server.port))
    vz0.display_current_results(_visuals(), epoch=1, save_result=False)
    vz0.close()
    assert [client.win_exists(str(w), env="test_env") for w in (11, 12, 13, 14)] == [True, True, True, False]

    # the page a browser opens renders (tornado >= 6.6 answers 403 for visdom 0.2.4's template)
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(f"http://127.0.0.1:{visdom_server.port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read(4096).lower()
    except urllib.error.HTTPError as e:
        pytest.fail(f"visdom web page answers {e.code}: run scripts/install_visdom.sh (pins tornado<6.6)")

    # the server dies: one warning, visdom off, nothing more
    visdom_server.proc.terminate()
    visdom_server.proc.wait(timeout=5)
    t0 = time.monotonic()
    vz.plot_current_losses(2, 0.5, {"G_GAN": 0.4, "G_L1": 8.0})
    assert time.monotonic() - t0 < 5.0
    warns = _visualizer_warnings(caplog)
    assert len(warns) == 1 and "failed" in warns[0].getMessage()
    assert vz.vis is None
    _assert_silent_and_fast(vz, caplog, monkeypatch)
    vz.close()



class _RecordingVisdom:
    """Stands in for a connected visdom client; records what would be sent."""

    def __init__(self):
        self.calls = []

    def images(self, tensor, **kw):
        self.calls.append(("images", tensor, kw))

    def text(self, text, **kw):
        self.calls.append(("text", text, kw))


def test_visdom_grid_pads_mixed_sizes_white(tmp_path):
    vz = Visualizer(_opt(tmp_path, display_ncols=2))
    rec = _RecordingVisdom()
    vz.vis = rec
    g = torch.Generator().manual_seed(5)
    visuals = {"small<1>": torch.rand(1, 3, 4, 5, generator=g) * 2 - 1,
               "big": torch.rand(1, 1, 7, 6, generator=g) * 2 - 1}
    vz.display_current_results(visuals, 1, False)
    (kind, grid, kw), (kind2, text, kw2) = rec.calls
    assert kind == "images" and kind2 == "text"
    assert grid.shape == (2, 3, 7, 6) and kw["nrow"] == 2 and kw["win"] == vz.images_win
    np.testing.assert_allclose(grid[0, :, :4, :5], _expected_u8(visuals["small<1>"]).transpose(2, 0, 1) / 255.0,
                               atol=1e-6)
    assert np.all(grid[0, :, 4:, :] == 1.0) and np.all(grid[0, :, :, 5:] == 1.0)  # white padding
    np.testing.assert_allclose(grid[1], _expected_u8(visuals["big"]).transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert "small&lt;1&gt;" in text and "<1>" not in text and kw2["win"] == vz.labels_win
