"""Training visuals: an HTML page of sample images per epoch, a loss log file, and (optionally) live visdom plots.

The interface follows the pix2pix/CycleGAN ``Visualizer`` (``display_current_results``, ``plot_current_losses``,
``print_current_losses``). Files, under ``<checkpoints_dir>/<name>/``:

- ``web/images/epoch{epoch:03d}_{label}.png``: the first image of each visual, lossless PNG (``util/image_io.py``);
- ``web/index.html``: every saved epoch, newest first (rewritten atomically, skipped with ``--no_html``);
- ``loss_log.txt``: one header line per run (with the date), then one line per :meth:`Visualizer.print_current_losses`.

visdom (https://github.com/fossasia/visdom) is used only with ``--display_id`` > 0, and never blocks training:

- ``--display_id 0``: visdom is not imported and no network connection is made.
- otherwise the server ``--display_server:--display_port`` is probed once (plain TCP connect, 2 s timeout, then
  ``Visdom.check_connection``); if it is unreachable, or the ``visdom`` package is missing (see
  ``scripts/install_visdom.sh``), ONE ``logging`` warning is emitted and visdom stays off for the rest of the run.
- every request carries a timeout (:data:`REQUEST_TIMEOUT_S`); if a send fails later (server stopped), one warning
  and visdom is turned off.
- this code never starts a visdom server (see docs/VISDOM.md).

Only the process with ``getattr(opt, "rank", 0) == 0`` writes or sends anything; on other ranks every method is a
no-op, so distributed training does not write the same files from several processes.
"""
from __future__ import annotations

import contextlib
import html
import io
import logging
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import urlparse

import numpy as np
import torch

from util.html import HTMLPage, visual_label
from util.image_io import save_png, tensor_to_uint8

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
"""Seconds allowed for the TCP connect that checks whether the visdom server listens."""
CHECK_TIMEOUT_S = 2.0
"""Seconds ``Visdom.check_connection`` may wait for the server's answer after the TCP probe succeeded."""
REQUEST_TIMEOUT_S = 10.0
"""Timeout of every HTTP request sent to visdom (connect and read), so a stalled server cannot hang training."""
HTML_REFRESH_S = 30
"""The training page reloads itself this often (seconds) in a browser."""
INSTALL_HINT = "scripts/install_visdom.sh"


def _visual_to_uint8(t: Any) -> np.ndarray:
    """First image of a visual ``(N, C, H, W)`` (or ``(C, H, W)``) in [-1, 1] -> ``(H, W, 3)`` uint8 RGB."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"visuals must be torch tensors (N, C, H, W) in [-1, 1], got {type(t).__name__}")
    if t.dim() == 4:
        t = t[:1]
    a = tensor_to_uint8(t)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return a


def _server_host(server: str) -> str:
    """Host name of ``--display_server`` (``'http://localhost'`` -> ``'localhost'``; a bare host is accepted)."""
    parsed = urlparse(server if "://" in server else f"http://{server}")
    return parsed.hostname or "localhost"


def _import_visdom():
    """Import visdom lazily (only with ``--display_id`` > 0). Returns ``(module, None)`` or ``(None, reason)``."""
    try:
        import visdom
    except ImportError as e:
        return None, (
            f"the visdom package is not installed ({e}); install it with {INSTALL_HINT} "
            "(plain `pip install visdom` fails with recent setuptools)"
        )
    return visdom, None


def _make_visdom(visdom, server: str, port: int, env: str):
    """Create a ``visdom.Visdom`` client whose requests time out, without its incoming websocket.

    Requests made while connecting time out after :data:`PROBE_TIMEOUT_S`, later ones after
    :data:`REQUEST_TIMEOUT_S`. Returns ``(client, None)``, or ``(None, reason)`` if the server does not answer.
    """

    class _TimeoutVisdom(visdom.Visdom):
        # visdom documents _handle_post as the override point for the transport; the stock one has no timeout.
        post_timeout = PROBE_TIMEOUT_S

        def _handle_post(self, url, data=None):
            r = self.session.post(url, data={} if data is None else data, timeout=self.post_timeout)
            return r.text

    # visdom logs "Setting up a new session..." and a warning about the disabled websocket as WARNINGs and prints
    # "waiting" while it polls: keep those out of the training log.
    vlog = logging.getLogger("visdom")
    old_level = vlog.level
    vlog.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            vis = _TimeoutVisdom(
                server=server, port=port, env=env, raise_exceptions=True, use_incoming_socket=False
            )
            # check_connection(timeout_seconds=t) counts only its sleeps, not its requests: poll with a real deadline
            deadline = time.monotonic() + CHECK_TIMEOUT_S
            while not (ok := vis.check_connection(timeout_seconds=0)) and time.monotonic() < deadline:
                time.sleep(0.1)
    except (ConnectionError, OSError) as e:
        return None, f"the visdom server {server}:{port} does not answer ({e})"
    finally:
        vlog.setLevel(old_level)
    if not ok:
        return None, f"{server}:{port} accepts connections but does not answer like a visdom server"
    vis.post_timeout = REQUEST_TIMEOUT_S
    return vis, None


class Visualizer:
    """Saves, logs and (optionally) plots training visuals and losses; see the module docstring.

    Args:
        opt: options namespace. Read: ``name``, ``checkpoints_dir``, ``isTrain``, ``display_id`` (int, > 0 enables
            visdom), ``display_server`` ("http://localhost"), ``display_port`` (8097), ``display_env`` ("main"),
            ``display_winsize`` (256, px in HTML), ``display_ncols`` (4: images per row in visdom; 0 = one window
            per visual), ``no_html`` (False), ``rank`` (0). Missing display options take those defaults.

    Attributes:
        web_dir, img_dir, log_name: paths of the HTML folder, its images folder and ``loss_log.txt``.
        vis: the visdom client, or ``None`` when visdom is off.
        loss_win, images_win, labels_win: visdom window ids (``str(display_id)``, ``str(display_id + 1)``,
            ``str(display_id + 2)``; with ``display_ncols`` 0 the visuals use ``str(display_id + 1 + i)``).
    """

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        self.rank = int(getattr(opt, "rank", 0) or 0)
        self.active = self.rank == 0
        self.name = str(opt.name)
        self.display_id = int(getattr(opt, "display_id", 0) or 0)
        self.use_html = bool(getattr(opt, "isTrain", True)) and not bool(getattr(opt, "no_html", False))
        self.win_size = int(getattr(opt, "display_winsize", 256))
        self.ncols = int(getattr(opt, "display_ncols", 4))
        self.server = str(getattr(opt, "display_server", "http://localhost"))
        self.port = int(getattr(opt, "display_port", 8097))
        self.env = str(getattr(opt, "display_env", "main"))
        self.exp_dir = Path(opt.checkpoints_dir) / self.name
        self.web_dir = self.exp_dir / "web"
        self.img_dir = self.web_dir / "images"
        self.log_name = self.exp_dir / "loss_log.txt"
        self.loss_win = str(self.display_id)
        self.images_win = str(self.display_id + 1)
        self.labels_win = str(self.display_id + 2)
        self.vis = None
        self.saved = False
        self.plot_data: Optional[Dict[str, List]] = None
        from util.trackers import Trackers, from_options

        self.trackers = Trackers()
        self.step = 0
        if not self.active:
            return
        config = {k: v for k, v in vars(opt).items() if isinstance(v, (bool, int, float, str)) or v is None}
        self.trackers = from_options(opt, config)  # --use_tensorboard / --use_wandb
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        if self.use_html:
            self.img_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_name, "a", encoding="utf-8") as f:
            f.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")
        if self.display_id > 0:
            self._connect()

    # ------------------------------------------------------------------ visdom plumbing
    def _connect(self) -> None:
        visdom, reason = _import_visdom()
        if visdom is None:
            self._warn_off(reason)
            return
        host = _server_host(self.server)
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, self.port), timeout=PROBE_TIMEOUT_S):
                pass
        except OSError as e:
            self._warn_off(f"cannot reach the visdom server at {self.server}:{self.port} ({e})")
            return
        vis, reason = _make_visdom(visdom, self.server, self.port, self.env)
        if vis is None:
            self._warn_off(reason)
            return
        self.vis = vis
        log.info("visdom: sending plots to %s:%d env '%s' (%.1f s to connect)", self.server, self.port, self.env,
                 time.monotonic() - t0)

    def _warn_off(self, reason: str) -> None:
        self.vis = None
        log.warning("%s; live visdom plots are off for this run (HTML pages and loss_log.txt are still written). "
                    "Start a server as in docs/VISDOM.md or use --display_id 0.", reason)

    def _send(self, what: str, fn) -> None:
        """Run one visdom call; on a connection failure warn once and turn visdom off."""
        if self.vis is None:
            return
        try:
            fn(self.vis)
        except (ConnectionError, OSError) as e:
            self._warn_off(f"sending {what} to the visdom server {self.server}:{self.port} failed ({e})")

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Allow the next :meth:`display_current_results` to save images even with ``save_result=False``."""
        self.saved = False

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Send scalars (e.g. ``{"lr": 2e-4}``) to the enabled trackers at ``step`` (images seen)."""
        if self.active and self.trackers:
            self.trackers.log_scalars({k: float(v) for k, v in values.items()}, step)

    def display_current_results(self, visuals: Mapping[str, torch.Tensor], epoch: int, save_result: bool,
                                step: Optional[int] = None) -> None:
        """Show the first image of each visual in visdom and save it to the HTML page.

        Args:
            visuals: ordered ``label -> (N, C, H, W)`` float tensors in [-1, 1] (C = 1 or 3; values outside are
                clipped). Labels become file names (``epoch{epoch:03d}_{label}.png``): letters, digits, '_' and '-'.
            epoch: epoch number (>= 0).
            save_result: save the PNGs and rewrite ``web/index.html`` (also done on the first call after
                construction or :meth:`reset`). Ignored with ``--no_html``.
            step: images seen (``total_iters``), for the trackers (default: the last step seen).

        Raises:
            TypeError: a visual is not a tensor. ValueError: a visual has an unsupported shape, or a label contains a
            path separator.
        """
        if not self.active or not visuals:
            return
        for label in visuals:
            if "/" in label or "\\" in label or label in ("", ".", ".."):
                raise ValueError(f"visual label {label!r} cannot be used in a file name")
        images = {label: _visual_to_uint8(t) for label, t in visuals.items()}
        if self.trackers:
            self.step = self.step if step is None else int(step)
            self.trackers.log_images({f"images/{k}": a for k, a in images.items()}, self.step)
        if self.vis is not None:
            self._display_visdom(images)
        if self.use_html and (save_result or not self.saved):
            self.saved = True
            for label, a in images.items():
                save_png(a, self.img_dir / f"epoch{epoch:03d}_{label}.png")
            self._write_html(list(images), epoch)

    def _display_visdom(self, images: Dict[str, np.ndarray]) -> None:
        labels = list(images)
        # visdom takes (C, H, W) floats in [0, 1] and pads its grid with 1 (white).
        chw = [a.transpose(2, 0, 1).astype(np.float32) / 255.0 for a in images.values()]
        if self.ncols > 0:
            h = max(x.shape[1] for x in chw)
            w = max(x.shape[2] for x in chw)
            padded = []
            for x in chw:
                p = np.ones((3, h, w), np.float32)
                p[:, : x.shape[1], : x.shape[2]] = x
                padded.append(p)
            ncols = min(self.ncols, len(padded))
            rows = [labels[i:i + ncols] for i in range(0, len(labels), ncols)]
            table = "<table>" + "".join(
                "<tr>" + "".join(f"<td>{html.escape(lb)}</td>" for lb in row) + "</tr>" for row in rows
            ) + "</table>"
            self._send("images", lambda vis: vis.images(
                np.stack(padded), nrow=ncols, padding=2, win=self.images_win, env=self.env,
                opts=dict(title=f"{self.name} images"),
            ))
            self._send("labels", lambda vis: vis.text(
                table, win=self.labels_win, env=self.env, opts=dict(title=f"{self.name} labels"),
            ))
        else:
            for i, (label, x) in enumerate(zip(labels, chw)):
                self._send(label, lambda vis, x=x, i=i, label=label: vis.image(
                    x, win=str(self.display_id + 1 + i), env=self.env, opts=dict(title=label),
                ))

    def _write_html(self, labels: List[str], epoch: int) -> None:
        page = HTMLPage(self.web_dir, f"Experiment name = {self.name}", refresh=HTML_REFRESH_S)
        for n in range(epoch, -1, -1):
            present = [lb for lb in labels if (self.img_dir / f"epoch{n:03d}_{lb}.png").is_file()]
            if not present:
                continue
            page.add_header(f"epoch [{n}]")
            paths = [f"images/epoch{n:03d}_{lb}.png" for lb in present]
            captions = [visual_label(lb) if visual_label(lb) == lb else f"{visual_label(lb)} ({lb})" for lb in present]
            page.add_images(paths, captions, paths, width=self.win_size)
        page.save()

    def plot_current_losses(self, epoch: int, counter_ratio: float, losses: Mapping[str, float]) -> None:
        """Plot the losses in visdom as one line per loss against ``epoch + counter_ratio`` (fractional epochs).

        Args:
            epoch: current epoch. counter_ratio: progress within the epoch in [0, 1].
            losses: ordered ``name -> value`` (floats or 0-d tensors). If the set of names changes, the plot restarts.

        Does nothing when visdom is off (the values are kept in ``loss_log.txt`` by :meth:`print_current_losses`).
        """
        if not self.active or self.vis is None or not losses:
            return
        names = list(losses)
        if self.plot_data is None or self.plot_data["legend"] != names:
            self.plot_data = {"X": [], "Y": [], "legend": names}
        self.plot_data["X"].append(epoch + counter_ratio)
        self.plot_data["Y"].append([float(losses[k]) for k in names])
        x = np.stack([np.asarray(self.plot_data["X"], dtype=np.float64)] * len(names), axis=1)
        y = np.asarray(self.plot_data["Y"], dtype=np.float64)
        self._send("losses", lambda vis: vis.line(
            X=x, Y=y, win=self.loss_win, env=self.env,
            opts=dict(title=f"{self.name} loss over time", legend=names, xlabel="epoch", ylabel="loss"),
        ))

    def print_current_losses(
        self, epoch: int, iters: int, losses: Mapping[str, float], t_comp: float, t_data: float
    ) -> str:
        """Format, log (INFO) and append to ``loss_log.txt`` one line of losses.

        Args:
            epoch: epoch. iters: iterations (images) within the epoch. losses: ``name -> value``.
            t_comp: computation time per image (s). t_data: data loading time per image (s).

        Returns:
            The message, e.g. ``'(epoch: 1, iters: 20, time: 0.125, data: 0.010) G_GAN: 0.693 G_L1: 12.500 '``
            (the pix2pix format). Other ranks return it without logging or writing.
        """
        message = f"(epoch: {epoch}, iters: {iters}, time: {t_comp:.3f}, data: {t_data:.3f}) "
        message += "".join(f"{k}: {float(v):.3f} " for k, v in losses.items())
        if self.active:
            self.step = int(iters)
            if self.trackers:
                self.trackers.log_scalars({f"loss/{k}": float(v) for k, v in losses.items()}, self.step)
            log.info("%s", message)
            with open(self.log_name, "a", encoding="utf-8") as f:
                f.write(message + "\n")
        return message

    def close(self) -> None:
        """Close the visdom HTTP session (if any) and stop sending to visdom. Files on disk are already complete."""
        self.trackers.close()
        vis, self.vis = self.vis, None
        if vis is not None and getattr(vis, "_session", None) is not None:
            vis._session.close()
