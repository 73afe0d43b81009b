"""Distributed data parallel training through ``torchrun`` (``torch.distributed.run``).

Launch, one process per GPU (or per CPU slot with the gloo backend)::

    torchrun --nproc_per_node 2 train.py --dataroot ... --gpu_ids 0          # one machine, 2 GPUs
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d \\
             --rdzv_endpoint host0:29400 --rdzv_id bci train.py ... --gpu_ids 0  # two machines

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in each process's environment
(https://pytorch.org/docs/stable/elastic/run.html); :func:`init_from_env` reads them. Without them (a plain
``python train.py``) everything here is a no-op and training runs in one process.

* backend: ``nccl`` when ``--gpu_ids`` asks for GPUs (process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``), ``gloo`` on CPU;
* data: :func:`make_sampler` gives each process a disjoint share of every epoch (``DistributedSampler``; call
  ``set_epoch`` each epoch so the shuffle differs between epochs and agrees between processes);
* networks: :func:`wrap_ddp` wraps each one in :class:`FrozenAwareDDP`, which averages gradients across processes;
  while a network is frozen (every parameter ``requires_grad=False``, as a GAN discriminator during the generator
  step) or called without autograd, the wrapper calls the bare module, so DDP never waits for gradients that will not
  come (the PyTorch DDP notes: every parameter that takes part in a forward under DDP must get a gradient unless
  ``find_unused_parameters``);
* batch norm: :func:`convert_sync_batchnorm` (``nn.SyncBatchNorm``, CUDA only in PyTorch; on CPU each process keeps
  its own batch statistics and a warning says so).
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from util.errors import OptionError

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``[0, world_size)``, ``local_rank`` on its machine, the collective
    ``backend`` (``'nccl'``, ``'gloo'`` or ``None`` for a single process) and the ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_ranks(environ: Optional[dict] = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables; ``(0, 1, 0)`` when they are absent.

    Raises:
        OptionError: the variables are only partly set, not integers, or inconsistent (names the variable).
    """
    env = os.environ if environ is None else environ
    present = [k for k in ENV_VARS if k in env]
    if not present:
        return 0, 1, 0
    if len(present) != len(ENV_VARS):
        missing = [k for k in ENV_VARS if k not in env]
        raise OptionError(f"distributed environment incomplete: {', '.join(present)} set but {', '.join(missing)} "
                          "missing; launch with torchrun (python -m torch.distributed.run) or unset them")
    values = {}
    for k in ENV_VARS:
        try:
            values[k] = int(env[k])
        except ValueError:
            raise OptionError(f"environment variable {k}={env[k]!r} is not an integer (set by torchrun)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise OptionError(f"inconsistent distributed environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def init_from_env(opt: Any) -> DistInfo:
    """Join the process group described by torchrun's environment and record the result in ``opt``.

    Sets ``opt.rank``, ``opt.world_size``, ``opt.local_rank`` and ``opt.distributed``; under torchrun with GPUs also
    ``opt.device = cuda:LOCAL_RANK`` and ``opt.gpu_ids = [LOCAL_RANK]`` (restrict the GPUs a machine uses with
    ``CUDA_VISIBLE_DEVICES``). Single process (no torchrun variables, or ``WORLD_SIZE=1``): only the attributes are set.

    Raises:
        OptionError: malformed environment, or ``LOCAL_RANK`` has no GPU on this machine.
    """
    rank, world, local = env_ranks()
    opt.rank, opt.world_size, opt.local_rank, opt.distributed = rank, world, local, world > 1
    device = getattr(opt, "device", torch.device("cpu"))
    if world == 1:
        return DistInfo(device=device)
    use_gpu = bool(getattr(opt, "gpu_ids", [])) and device.type == "cuda"
    if use_gpu:
        n = torch.cuda.device_count()
        if local >= n:
            raise OptionError(f"torchrun started LOCAL_RANK {local} but this machine has {n} visible GPU(s): lower "
                              "--nproc_per_node or set CUDA_VISIBLE_DEVICES (--gpu_ids only switches GPUs on)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        opt.gpu_ids = [local]
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    opt.device = device
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (local rank %d), backend %s, device %s", rank, world, local, backend, device)
    return DistInfo(rank, world, local, backend, device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op if none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shared_seed(seed: Optional[int]) -> int:
    """``seed`` if given, else a random seed drawn on rank 0 and broadcast, so that every process agrees on it."""
    if seed is not None:
        return int(seed)
    value = [random.SystemRandom().randrange(2 ** 31) if rank() == 0 else 0]
    if is_distributed():
        dist.broadcast_object_list(value, src=0)
    return int(value[0])


def make_sampler(dataset: Dataset, opt: Any) -> Optional[DistributedSampler]:
    """A :class:`DistributedSampler` over ``dataset`` for this process (``None`` in a single process).

    Shuffles unless ``--serial_batches`` (then rank ``r`` takes items ``r, r + W, r + 2W, ...``: with batch ``b`` per
    process the ``W`` processes see together exactly the items of one ``b * W`` serial batch); the shuffle is seeded by
    :func:`shared_seed` ``(opt.seed)`` plus the epoch (``set_epoch``). When the dataset size is not a multiple of the
    world size the sampler repeats the first items to even out the shares (PyTorch's ``drop_last=False``); this is logged.
    """
    if not is_distributed():
        return None
    n, w = len(dataset), world_size()
    sampler = DistributedSampler(dataset, num_replicas=w, rank=rank(), shuffle=not opt.serial_batches,
                                 seed=shared_seed(getattr(opt, "seed", None)), drop_last=False)
    if n % w:
        log.warning("%d items do not split evenly over %d processes: %d item(s) are seen twice per epoch",
                    n, w, w - n % w)
    return sampler


def convert_sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm*d`` of ``net`` by :class:`nn.SyncBatchNorm` (statistics over the global batch).

    The parameters and buffers are the same tensors (optimizers built on them stay valid; the state-dict keys do not
    change). PyTorch synchronises batch norm only on accelerators: on CPU ``net`` is returned unchanged and a warning
    says that each process normalises with its own batch.
    """
    if not is_distributed() or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return net
    if device.type != "cuda":
        log.warning("--norm batch under distributed CPU training: PyTorch's SyncBatchNorm needs GPUs, so each process "
                    "normalises with its own batch of --batch_size images (use --norm instance for CPU equivalence)")
        return net
    return nn.SyncBatchNorm.convert_sync_batchnorm(net)


class FrozenAwareDDP(DistributedDataParallel):
    """:class:`DistributedDataParallel` that runs the bare module when no gradient can reach it.

    Forward passes with autograd off, or while every parameter has ``requires_grad=False`` (a discriminator frozen
    with ``BaseModel.set_requires_grad(net, False)`` for the generator step), call ``self.module`` directly: no
    gradient hooks are armed, so the next DDP forward does not wait for a reduction that never happens. All other
    calls are ordinary DDP forwards (gradients averaged over the processes during ``backward``).
    """

    def forward(self, *inputs, **kwargs):
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in self.module.parameters()):
            return self.module(*inputs, **kwargs)
        return super().forward(*inputs, **kwargs)


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``net`` in :class:`FrozenAwareDDP` (no-op in a single process or for a network without parameters).

    Rank 0's parameters and buffers are broadcast to every process at construction, so all start identical.
    """
    if not is_distributed() or not any(True for _ in net.parameters()):
        return net
    if device.type == "cuda":
        return FrozenAwareDDP(net, device_ids=[device.index], output_device=device.index)
    return FrozenAwareDDP(net)


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of ``value`` over the processes, in place (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def mean_scalar(value: float, device: torch.device = torch.device("cpu")) -> float:
    """Mean of a Python float over the processes (``value`` itself in a single process). Collective."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / world_size()


def mean_losses(losses: dict, device: torch.device = torch.device("cpu")) -> dict:
    """The same keys with each value averaged over the processes (the loss of the global batch when every process
    has the same batch size); ``losses`` itself in a single process. Collective: one all-reduce."""
    if not is_distributed() or not losses:
        return losses
    t = torch.tensor([float(v) for v in losses.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return type(losses)(zip(losses.keys(), (t / world_size()).tolist()))


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` in a single process). Collective."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
