"""The model contract shared by every model (pix2pix/CycleGAN convention, with CUT's compute-then-step split).

A model declares ``loss_names`` (logged as ``loss_<name>``), ``visual_names`` (tensor attributes shown and saved),
``model_names`` (networks ``net<name>``, saved as ``<epoch>_net_<name>.pth``) and ``optimizers``. Subclasses
implement ``set_input``, ``forward``, ``compute_D_loss``/``compute_G_loss`` (return tensors, never step) and
``optimize_parameters`` (the only place that steps).

Mixed precision and distributed training hooks (see docs/PERFORMANCE.md): inside ``optimize_parameters`` a model
should call ``self.backward(loss, optimizer)`` instead of ``loss.backward()`` and ``self.step(optimizer)`` instead of
``optimizer.step()`` (needed for ``--amp fp16`` gradient scaling; exactly the plain calls with ``--amp none``), and
freeze a network with ``self.set_requires_grad(net, False)`` while another network's loss goes through it (under DDP
a frozen network is called bare, see :class:`util.distributed.FrozenAwareDDP`). The training loop calls
:meth:`train_step`, which runs ``optimize_parameters`` under the ``--amp`` autocast.
"""
from __future__ import annotations

import logging
import random
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.amp import AmpState
from models.networks import generator_extras, generator_stride
from models.networks.schedulers import get_scheduler
from models.tta import tta_apply, tta_modes_from_opt
from util.checkpoint import (CheckpointSet, load_network, open_set, save_checkpoint, save_network, unwrap,
                              write_set)
from util.errors import CheckpointError, NonFiniteLossError

log = logging.getLogger(__name__)


class BaseModel:
    """Abstract base of all models. ``opt`` is the parsed options namespace (see ``options/``)."""

    model_name = "base"

    @staticmethod
    def modify_commandline_options(parser, is_train: bool):
        """Add model-specific options and change defaults; returns ``parser``."""
        return parser

    def __init__(self, opt):
        self.opt = opt
        self.isTrain = opt.isTrain
        self.device = getattr(opt, "device", torch.device("cpu"))
        self.save_dir = Path(opt.checkpoints_dir) / opt.name
        self.loss_names: list[str] = []
        self.model_names: list[str] = []
        self.visual_names: list[str] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list = []
        self.image_paths: list[str] = []
        self.metric = 0.0  # used by the plateau policy
        self.train_mode_inference = bool(getattr(opt, "train_mode_inference", False))
        self.amp = AmpState(getattr(opt, "amp", "none") or "none", self.device)

    # ---- to implement -------------------------------------------------------------------------------------------
    def set_input(self, data: dict) -> None:
        """Unpack a batch from the data loader: ``A`` ``(N, input_nc, H, W)`` and, when present, ``B``
        ``(N, output_nc, H, W)``, both in [-1, 1], plus ``A_paths`` and ``her2`` (metadata). The dataset has already
        applied ``--direction``: ``A`` is always the network's input."""
        self.real_A = data["A"].to(self.device, non_blocking=True)
        self.real_B = data["B"].to(self.device, non_blocking=True) if "B" in data else None
        self.image_paths = data["A_paths"]
        self.her2 = data.get("her2")

    def forward(self) -> None:
        raise NotImplementedError

    def data_dependent_initialize(self, data: dict) -> None:
        """Build networks whose shapes depend on the data (e.g. CUT's patch-sampling MLP ``netF``) from the first
        batch ``data`` (a loader batch dict, as for :meth:`set_input`). The entry points call it once, before
        :meth:`setup` (so the lazily built networks are loaded with the checkpoint set and get schedulers).
        Default: nothing to build."""

    def set_epoch(self, epoch: int) -> None:
        """Told by the training loop at the start of every epoch (1-based, as logged), for losses whose weights follow
        the training progress (ASP). Default: remembered as ``current_epoch``."""
        self.current_epoch = int(epoch)

    def optimize_parameters(self) -> None:
        raise NotImplementedError

    # ---- setup / modes ------------------------------------------------------------------------------------------
    def networks(self) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(self, "net" + name)) for name in self.model_names]

    def setup(self, opt) -> None:
        """Create schedulers (training) and load networks (testing, or ``--continue_train``)."""
        if self.isTrain:
            self.schedulers = [get_scheduler(o, opt.lr_policy, opt.n_epochs, opt.n_epochs_decay, opt.epoch_count,
                                             opt.lr_decay_iters) for o in self.optimizers]
        if not self.isTrain or opt.continue_train:
            suffix = f"iter_{opt.load_iter}" if getattr(opt, "load_iter", 0) > 0 else opt.epoch
            self.load_networks(suffix)
        self.print_networks(getattr(opt, "verbose", False))

    def prepare_networks(self, opt) -> None:
        """Apply the speed and scale options to every network (call after :meth:`setup`, before resuming optimizers):

        ``--channels_last`` memory format; ``--winograd`` (CPU 3x3 convolutions); under torchrun, SyncBatchNorm
        (CUDA) and :func:`util.distributed.wrap_ddp` for the networks that have an optimizer (training);
        ``--compile`` (torch.compile, eager fallback with a warning); cuDNN autotuning on CUDA, glibc allocator
        tuning on the CPU. ``self.net<name>`` is replaced by the wrapped network; parameters are
        the same objects, checkpoints keep the bare layout (:func:`util.checkpoint.unwrap`).
        """
        from util import distributed, fast_paths

        fast_paths.configure_backends(self.device)
        for name, net in self.networks():
            if getattr(opt, "channels_last", False):
                fast_paths.to_channels_last(net)
            if getattr(opt, "winograd", False):
                from models.networks.winograd import use_winograd

                use_winograd(net, f"net{name}", self.device, getattr(opt, "compile", False),
                             getattr(opt, "amp", "none"))
            if self.isTrain and distributed.is_distributed():
                net = distributed.convert_sync_batchnorm(net, self.device)
            if getattr(opt, "compile", False):
                net = fast_paths.maybe_compile(net, f"net{name}", self.device)
            if self.isTrain and distributed.is_distributed():
                net = distributed.wrap_ddp(net, self.device)
            setattr(self, "net" + name, net)

    def inputs_to_channels_last(self) -> None:
        """Convert the input images set by :meth:`set_input` (4-D tensor attributes named ``real_*``, the
        pix2pix/CycleGAN convention) to channels-last memory format on the model's device (``--channels_last``)."""
        for name, value in list(vars(self).items()):
            if name.startswith("real_") and isinstance(value, torch.Tensor) and value.dim() == 4:
                setattr(self, name, value.contiguous(memory_format=torch.channels_last))

    def bare_network(self, name: str) -> nn.Module:
        """``net<name>`` without DDP / compile wrappers."""
        return unwrap(getattr(self, "net" + name))

    # ---- mixed precision hooks ----------------------------------------------------------------------------------
    def autocast(self):
        """Context manager: autocast to the ``--amp`` dtype on this model's device (no-op with ``--amp none``)."""
        return self.amp.autocast()

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, retain_graph: bool = False) -> None:
        """Back-propagate ``loss`` for ``optimizer``'s parameters: ``loss.backward()`` outside autocast, with the loss
        scaled by ``optimizer``'s own GradScaler under ``--amp fp16`` (PyTorch AMP recipe)."""
        self.amp.backward(loss, optimizer, retain_graph=retain_graph)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under ``--amp fp16`` unscale, skip the step on inf/NaN gradients, update the scale."""
        self.amp.step(optimizer)

    def gan_iteration(self, netsD, d_first: bool = True) -> None:
        """One GAN training iteration shared by the models: ``forward()``, then a discriminator step and a generator
        step, in pix2pix order (``d_first``) or CycleGAN order (G first). Losses come from ``compute_D_loss()`` /
        ``compute_G_loss()`` under the ``--amp`` autocast; back-propagation and steps go through :meth:`backward` /
        :meth:`step` (fp16 loss scaling). The discriminators are frozen during the G step, so under DDP the G loss
        goes through the bare D and no D gradient is expected. Call it from ``optimize_parameters()`` only."""
        with self.autocast():
            self.forward()

        def d_step():
            self.set_requires_grad(netsD, True)
            self.optimizer_D.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.compute_D_loss()
            self.backward(loss, self.optimizer_D)
            self.step(self.optimizer_D)

        def g_step():
            self.set_requires_grad(netsD, False)
            extra = self.extra_G_optimizers()  # e.g. netR of --reg_correction, trained on the G objective
            for o in [self.optimizer_G, *extra]:
                o.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.compute_G_loss()
            self.backward(loss, self.optimizer_G)
            for o in [self.optimizer_G, *extra]:
                self.step(o)

        for stage in ((d_step, g_step) if d_first else (g_step, d_step)):
            stage()
        self.set_requires_grad(netsD, True)

    def extra_G_optimizers(self) -> list:
        """Optimizers of networks trained on the generator objective besides ``optimizer_G`` (stepped in
        :meth:`gan_iteration`'s generator step, after G's); none by default."""
        return []

    def train_step(self) -> None:
        """One training iteration: ``optimize_parameters()`` under the ``--amp`` autocast.

        Raises:
            OptionError: ``--amp fp16`` with a model whose ``optimize_parameters`` does not call
                :meth:`backward` (its gradients could not be scaled and would underflow).
        """
        with self.autocast():
            self.optimize_parameters()
        if self.amp.uses_scaler and self.amp.hook_calls == 0:
            from util.errors import OptionError

            raise OptionError(f"--amp fp16: model '{self.model_name}' calls loss.backward() directly instead of "
                              "self.backward(loss, optimizer), so its gradients cannot be scaled; use --amp bf16 or "
                              "--amp none")

    def eval(self) -> None:
        for _, net in self.networks():
            net.eval()

    def train(self) -> None:
        for _, net in self.networks():
            net.train()

    def test(self) -> None:
        """Forward pass without gradients (``torch.inference_mode``, ``--amp`` autocast), then ``compute_visuals``.

        Visuals computed in reduced precision are returned as float32 tensors."""
        with torch.inference_mode():
            with self.autocast():
                self.forward()
                self.compute_visuals()
            if self.amp.enabled:
                for n in self.visual_names:
                    v = getattr(self, n, None)
                    if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32:
                        setattr(self, n, v.float())

    def compute_visuals(self) -> None:
        """Extra visuals for display (none by default)."""

    def get_image_paths(self) -> list[str]:
        return self.image_paths

    # ---- padding for full-resolution inference ------------------------------------------------------------------
    def generator_stride(self) -> int:
        return generator_stride(self.opt.netG, **generator_extras(self.opt))

    def run_generator(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Apply ``net`` to ``x`` ``(N, C, H, W)``; when H or W is not a multiple of the generator's stride (test
        time, ``--preprocess none``), pad (reflect, or replicate where reflect is impossible) to the next multiple and
        crop the output back, never resampling."""
        modes = tta_modes_from_opt(self.opt) if not self.isTrain else None
        if modes:
            return tta_apply(lambda v: self._run_padded(net, v), x, modes)
        return self._run_padded(net, x)

    def _run_padded(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        s = self.generator_stride()
        h, w = x.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        if ph == 0 and pw == 0:
            return net(x)
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        y = net(F.pad(x, (0, pw, 0, ph), mode=mode))
        return y[..., :h, :w]

    # ---- learning rate ------------------------------------------------------------------------------------------
    def update_learning_rate(self) -> float:
        """Step every scheduler once (end of an epoch); returns the new learning rate of the first optimizer."""
        old = self.optimizers[0].param_groups[0]["lr"]
        for s in self.schedulers:
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(self.metric)
            else:
                s.step()
        lr = self.optimizers[0].param_groups[0]["lr"]
        log.info("learning rate %.7f -> %.7f", old, lr)
        return lr

    def current_lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    # ---- visuals and losses -------------------------------------------------------------------------------------
    def get_current_visuals(self) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((n, getattr(self, n)) for n in self.visual_names if isinstance(getattr(self, n, None), torch.Tensor))

    def get_current_losses(self) -> "OrderedDict[str, float]":
        """Current losses as Python floats (this synchronises with the device: call it at the print frequency)."""
        out = OrderedDict()
        for n in self.loss_names:
            v = getattr(self, "loss_" + n, None)
            if v is not None:
                out[n] = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
        return out

    def check_finite(self, epoch: int, iteration: int) -> None:
        """Raise :class:`NonFiniteLossError` naming the loss, epoch and iteration if any current loss is NaN/inf."""
        for n in self.loss_names:
            v = getattr(self, "loss_" + n, None)
            if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v.detach()).all()):
                raise NonFiniteLossError(
                    f"loss {n} = {float(v.detach())} at epoch {epoch}, iteration {iteration} (images seen); training "
                    "stopped and no checkpoint was written for this state. Lower --lr or check the input data.")

    # ---- saving and loading -------------------------------------------------------------------------------------
    def save_set(self, label, epoch: int, total_iters: int, epoch_iter: int = 0, epoch_items: int = 0,
                 extra: Optional[dict] = None, options: Optional[dict] = None, on_commit=None) -> dict:
        """Save one checkpoint *set* atomically (:func:`util.checkpoint.write_set`): every network
        (``<label>_net_<name>.pth``, classic key layout, CPU tensors), the training state (``<label>_state.pth``, with
        ``extra`` merged in) and the manifest ``<label>_set.json`` (model, networks, epoch, ``epoch_iter`` = batches
        and ``epoch_items`` = items of this process done in an unfinished epoch (0 at an epoch end), images seen,
        options, file hashes). A reader sees the whole previous set or the whole new one, never a mix.
        ``on_commit(manifest)`` is called right after the commit point. Returns the manifest.

        Raises:
            CheckpointError: a file cannot be written (the message names it); the previous set is intact.
        """
        objects = {}
        for name, net in self.networks():
            objects[f"{label}_net_{name}.pth"] = {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()}
        state = self.training_state(epoch, total_iters)
        state["epoch_iter"] = int(epoch_iter)
        state["epoch_items"] = int(epoch_items)
        if extra:
            state.update(extra)
        objects[f"{label}_state.pth"] = state
        meta = {"model": self.model_name, "networks": list(self.model_names), "epoch": int(epoch),
                "epoch_iter": int(epoch_iter), "epoch_items": int(epoch_items), "total_iters": int(total_iters),
                "options": options or {}}
        return write_set(self.save_dir, label, objects, meta, on_commit=on_commit)

    def save_networks(self, label) -> None:
        """Save every network to its own ``<save_dir>/<label>_net_<name>.pth`` (atomic per file, no set manifest:
        for tools and tests; training saves whole sets with :meth:`save_set`)."""
        for name, net in self.networks():
            save_network(net, self.save_dir / f"{label}_net_{name}.pth")

    def open_checkpoint_set(self, label) -> CheckpointSet:
        """The checkpoint set ``label`` of this experiment (:func:`util.checkpoint.open_set`), checked against this
        model: a set written by another ``--model`` is refused with both names.

        Raises:
            CheckpointError: no such set, an unreadable manifest, or a set of another model.
        """
        cs = open_set(self.save_dir, label)
        written_by = cs.get("model")
        if written_by is not None and written_by != self.model_name and not self._accepts_set_of(written_by):
            raise CheckpointError(
                f"checkpoint set '{label}' in '{self.save_dir}' was written by --model {written_by} (networks "
                f"{', '.join(cs.get('networks') or [])}), not --model {self.model_name}: use --model {written_by}")
        return cs

    def _accepts_set_of(self, model_name: str) -> bool:
        """Whether this model may load networks from a set written by ``model_name`` (``--model test`` may)."""
        return False

    def load_networks(self, label) -> None:
        """Load ``<label>_net_<name>.pth`` of checkpoint set ``label`` into each network (files checked against the
        set's manifest; a legacy set without manifest loads with a warning)."""
        cs = self.open_checkpoint_set(label)
        for name, net in self.networks():
            load_network(net, cs.path(f"{label}_net_{name}.pth"), map_location=self.device)
        self.loaded_set = cs

    def training_state(self, epoch: int, total_iters: int) -> dict:
        """Everything besides the weights that an exact resume needs: epoch, iteration, optimizers, schedulers and
        the python / numpy / torch random states (checkpoint-safe types only, loadable with ``weights_only``)."""
        np_state = np.random.get_state()
        state = {
            "epoch": int(epoch),
            "total_iters": int(total_iters),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [{k: v for k, v in s.state_dict().items() if k != "lr_lambdas"} for s in self.schedulers],
            "rng_torch": torch.get_rng_state(),
            "rng_numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                          "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "rng_python": _py_state_to_tensor(random.getstate()),
            "grad_scalers": self.amp.state_dicts(self.optimizers),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        state.update(self.extra_state())
        return state

    def extra_state(self) -> dict:
        """Model-specific resume state (e.g. CycleGAN image pools); checkpoint-safe types only."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def save_training_state(self, label, epoch: int, total_iters: int, extra: Optional[dict] = None) -> Path:
        """Write ``<label>_state.pth`` alone (atomic per file; training writes whole sets with :meth:`save_set`)."""
        state = self.training_state(epoch, total_iters)
        if extra:
            state.update(extra)
        return save_checkpoint(state, self.save_dir / f"{label}_state.pth")

    def load_training_state(self, label) -> dict:
        """Restore optimizers, schedulers and random states saved by :meth:`save_training_state`; returns the state
        (its ``epoch`` is the last completed epoch, ``total_iters`` the images seen)."""
        cs = getattr(self, "loaded_set", None)
        if cs is None or cs.label != str(label):
            cs = self.open_checkpoint_set(label)
        path = cs.path(f"{label}_state.pth")
        state = cs.load(f"{label}_state.pth", map_location="cpu")
        missing = [k for k in ("epoch", "total_iters", "optimizers", "schedulers", "rng_torch", "rng_numpy",
                               "rng_python") if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(f"'{path}' is not a training state (missing {', '.join(missing)})")
        if len(state.get("optimizers", [])) != len(self.optimizers):
            raise CheckpointError(f"'{path}' holds {len(state.get('optimizers', []))} optimizer states, this model has "
                                  f"{len(self.optimizers)}: was it written by another --model?")
        for o, sd in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(sd)
        for s, sd in zip(self.schedulers, state["schedulers"]):
            cur = s.state_dict()
            cur.update({k: v for k, v in sd.items() if k in cur and k != "lr_lambdas"})
            s.load_state_dict(cur)
            if isinstance(s, torch.optim.lr_scheduler.LambdaLR):
                # the schedule comes from this run's options (e.g. a longer --n_epochs_decay), the position from the
                # checkpoint: recompute the rate of the next epoch instead of keeping the saved one
                for group, base, fn in zip(s.optimizer.param_groups, s.base_lrs, s.lr_lambdas):
                    group["lr"] = base * fn(s.last_epoch)
                s._last_lr = [g["lr"] for g in s.optimizer.param_groups]
        torch.set_rng_state(state["rng_torch"])
        n = state["rng_numpy"]
        np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        random.setstate(_py_state_from_tensor(state["rng_python"]))
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.amp.load_state_dicts(self.optimizers, state.get("grad_scalers"))
        self.load_extra_state(state)
        state.setdefault("epoch_iter", 0)
        return state

    def print_networks(self, verbose: bool = False) -> None:
        for name, net in self.networks():
            n = sum(p.numel() for p in unwrap(net).parameters())
            if verbose:
                log.info("%s", unwrap(net))
            log.info("[Network %s] Total number of parameters : %.3f M", name, n / 1e6)

    def set_requires_grad(self, nets, requires_grad: bool = False) -> None:
        for net in nets if isinstance(nets, (list, tuple)) else [nets]:
            if net is not None:
                for p in net.parameters():
                    p.requires_grad = requires_grad


def _py_state_to_tensor(state) -> dict:
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss)}


def _py_state_from_tensor(d: dict):
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])
