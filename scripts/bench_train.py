"""Training-step benchmark: steps/s, images/s and peak memory per model, image size and speed option.

    python scripts/bench_train.py                                   # small default (a few minutes on 2 CPU cores)
    python scripts/bench_train.py --models pyramidpix2pix,pyramidpix2pix_L1 --sizes 256,512 \\
        --options eager,channels_last,compile,channels_last+compile --steps 5 --repeats 3 --out bench.md
    python scripts/bench_train.py --models classic,pyramidpix2pix --options eager,default --repeats 3  # issue 19
    python scripts/bench_train.py --device cuda --sizes 1024 --options eager,bf16,bf16+channels_last
    python scripts/bench_train.py --device cuda --nproc 2 ...       # DDP through torchrun, images/s of the job
    python scripts/bench_train.py ... --readme README.md            # table between <!-- bench:start/end -->
    python scripts/bench_train.py --models classic,pyramidpix2pix --reference ~/BCI   # + the authors' release
    python scripts/bench_train.py --models pyramidpix2pix --options default --concurrent 2 \
        --policies adaptive,libgomp                                 # two trainings at once vs one alone

Options: ``default`` is train.py's own defaults (``--fast_cpu on``: channels-last + Winograd on the CPU); every other
entry runs with ``--fast_cpu off`` and only the flags it names (``eager``: none). Non-classic rows run with this
project's process defaults (TCMalloc where present, adapting thread count); ``classic`` and ``--reference`` rows run
as the release does (glibc ``malloc``, libgomp defaults).

Every configuration runs in a fresh subprocess (peak memory of that configuration alone: CPU peak RSS from
``resource.getrusage``, GPU ``torch.cuda.max_memory_allocated``) on synthetic inputs in [-1, 1], through the same
code path as train.py (``BaseModel.prepare_networks`` + ``train_step``). ``--warmup`` steps (compilation, oneDNN /
cuDNN autotuning, allocator) are not timed; then ``--steps`` steps are timed one by one (CUDA synchronised) and the
median is kept. The CPU time of the process per step (``time.process_time``, all threads) is reported too: on a
shared machine it varies less than wall time. ``--repeats R`` runs all configurations R times, interleaved (config 1, 2, ..., 1, 2, ...), and
reports the median of the R medians, so a noisy shared machine affects every configuration alike.

Models: ``pix2pix`` (U-Net 256, batch 1), ``pyramidpix2pix`` (pattern L1_L2_L3_L4, resnet_9blocks, batch 2, the
BCI recipe), ``pyramidpix2pix_L1`` (the same networks and batch with the L1 term only = pix2pix on the pyramid's
networks; their ratio is the pyramid's cost), ``pyramidpix2pix_reg`` / ``pyramidpix2pix_dab`` (the BCI recipe with
``--reg_correction`` / ``--lambda_dab 1``: their ratio to ``pyramidpix2pix`` is the cost of those options),
``cycle_gan``, ``pix2pixhd`` (without the VGG loss: no weights offline),
``cut`` / ``fastcut`` / ``asp`` (their recipes' networks) and ``pix2pix_resnet6`` (pix2pix with ASP's generator:
resnet_6blocks, instance norm, no dropout; the reference for ASP's step),
``classic`` (the speed reference: :func:`classic_step`, the pyramid pix2pix step written as the authors' release
writes it, with stock ``nn.Dropout`` and none of this project's fast paths; its column "vs classic step" is the
issue-8 comparison); models whose module is missing are listed as unavailable. ``--profile N`` logs the top N
operators of one extra step per run. Options: ``eager`` (float32 baseline) or ``+``-joined
``channels_last``, ``winograd``, ``compile``, ``bf16``, ``fp16``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_train")

MODELS = {
    "pix2pix": ["--model", "pix2pix"],
    "pyramidpix2pix": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4"],
    "pyramidpix2pix_L1": ["--model", "pyramidpix2pix", "--pattern", "L1"],
    # issue 16: RegGAN registration correction / DAB loss on the BCI recipe (ratio to pyramidpix2pix = their cost)
    "pyramidpix2pix_reg": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4", "--reg_correction"],
    "pyramidpix2pix_dab": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4", "--lambda_dab", "1"],
    "cycle_gan": ["--model", "cycle_gan"],
    "pix2pixhd": ["--model", "pix2pixhd", "--no_vgg_loss"],
    # the reference: the classic step of the authors' release, see classic_step()
    "classic": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4"],
    # contrastive models with their recipes' networks, and pix2pix with ASP's generator (resnet_6blocks, instance
    # norm, no dropout; pix2pix's own conditional 70x70 D) as their reference step
    "pix2pix_resnet6": ["--model", "pix2pix", "--netG", "resnet_6blocks", "--norm", "instance", "--no_dropout"],
    "cut": ["--model", "cut", "--CUT_mode", "CUT"],
    "fastcut": ["--model", "cut", "--CUT_mode", "FastCUT"],
    "asp": ["--model", "asp"],
}
# every configuration names its speed flags explicitly (--fast_cpu off); "default" is train.py with no speed flags
OPTION_FLAGS = {"eager": [], "fp32": [], "channels_last": ["--channels_last"], "compile": ["--compile"],
                "winograd": ["--winograd"], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"], "default": []}
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


def option_flags(option: str) -> List[str]:
    """train.py flags of an option string such as ``channels_last+compile`` (raises OptionError if unknown)."""
    from util.errors import OptionError

    flags: List[str] = []
    for token in option.split("+"):
        if token not in OPTION_FLAGS:
            raise OptionError(f"--options: unknown option {token!r} in {option!r}; valid: {', '.join(OPTION_FLAGS)} "
                              "joined with '+'")
        flags += OPTION_FLAGS[token]
    return flags if option == "default" else ["--fast_cpu", "off", *flags]


# ------------------------------------------------------------------------------------------------ worker (one config)
def classic_step(model):
    """A training step written the way the pix2pix-family releases (and the BCI release) write it, as the speed
    reference: the same networks, losses and pyramid as ``pyramidpix2pix`` (``--pattern L1_L2_L3_L4``), but
    ``torch.nn.Dropout``, NCHW tensors, PyTorch's allocator settings untouched and none of this project's fast
    paths. Order: G forward; D step on (real, detached fake); G step with D frozen (GAN + weighted pyramid L1).

    Returns a function of no arguments running one step on ``model.real_A`` / ``model.real_B``.
    """
    import torch
    from torch import nn

    from models.networks.dropout import Dropout
    from models.pyramid import pyramid_l1

    for parent in model.netG.modules():  # swap this project's dropout for the stock module
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, nn.Dropout(child.p))
    G, D, opt_G, opt_D = model.netG, model.netD, model.optimizer_G, model.optimizer_D
    bce = nn.BCEWithLogitsLoss()
    weights = model.level_weights

    def step():
        a, b = model.real_A, model.real_B
        fake = G(a)
        for p in D.parameters():
            p.requires_grad_(True)
        opt_D.zero_grad()
        pred_fake = D(torch.cat((a, fake.detach()), 1))
        pred_real = D(torch.cat((a, b), 1))
        loss_D = 0.5 * (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real)))
        loss_D.backward()
        opt_D.step()
        for p in D.parameters():
            p.requires_grad_(False)
        opt_G.zero_grad()
        pred_fake = D(torch.cat((a, fake), 1))
        _, per_level = pyramid_l1(fake, b, model.levels)
        loss_G = bce(pred_fake, torch.ones_like(pred_fake)) + sum(w * s for w, s in zip(weights, per_level))
        loss_G.backward()
        opt_G.step()
        model.loss_G, model.loss_D = loss_G.detach(), loss_D.detach()

    return step


def _profile_table(step, rows: int) -> str:
    """Self-CPU-time table of the operators of one call of ``step`` (``torch.profiler``), top ``rows``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36, max_shapes_column_width=80)


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def run_worker(args) -> dict:
    """Build the model of one configuration, run warmup + timed steps on synthetic data; return the measurements."""
    import torch

    from util.errors import OptionError

    import models
    import options
    from util import distributed
    from util.threads import rebalance

    if args.threads:
        torch.set_num_threads(args.threads)
    argv = [*MODELS[args.model_key], *option_flags(args.option), "--dataroot", str(REPO / "nonexistent"),
            "--checkpoints_dir", str(Path(args.tmp) / "ck"), "--name", "bench", "--display_id", "0",
            "--gpu_ids", "0" if args.device == "cuda" else "-1", "--seed", "0", "--ngf", str(args.ngf)]
    if args.ndf is not None:  # default: the model's own (64; ASP's recipe 32)
        argv += ["--ndf", str(args.ndf)]
    if args.batch_size:
        argv += ["--batch_size", str(args.batch_size)]
    opt = options.parse_train(argv)
    info = distributed.init_from_env(opt)
    try:
        options.seed_everything(opt.seed)
        model = models.create_model(opt)
        b, s = opt.batch_size, args.size
        gen = torch.Generator().manual_seed(info.rank)
        batch = {"A": torch.rand(b, opt.input_nc, s, s, generator=gen) * 2 - 1,
                 "B": torch.rand(b, opt.output_nc, s, s, generator=gen) * 2 - 1,
                 "A_paths": [f"a{i}.png" for i in range(b)], "B_paths": [f"b{i}.png" for i in range(b)],
                 "her2": ["0"] * b}
        model.data_dependent_initialize(batch)  # lazily built networks (CUT's netF), as train.py does
        model.setup(opt)
        classic = args.model_key == "classic"
        if classic and args.option not in ("eager", "fp32"):
            raise OptionError(f"the classic reference step has no speed options; got --option {args.option!r}")
        if not classic:
            model.prepare_networks(opt)
        model.train()
        device = opt.device

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, cpu_times = [], []
        t_first = None
        classic_fn = classic_step(model) if classic else None

        def one_step():
            model.set_input(batch)
            if classic:
                classic_fn()
                return
            if opt.channels_last:
                model.inputs_to_channels_last()
            model.train_step()
            rebalance()  # as train.py does after every step (a no-op unless the thread count adapts)

        thread_counts = []
        for i in range(args.warmup + args.steps):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            one_step()
            sync()
            dt = time.perf_counter() - t0
            if i == 0:
                t_first = dt
            if i >= args.warmup:
                times.append(dt)
                cpu_times.append(time.process_time() - c0)
                thread_counts.append(torch.get_num_threads())
        profile = _profile_table(one_step, args.profile) if args.profile else None
        losses = ({"G": float(model.loss_G), "D": float(model.loss_D)} if classic
                  else model.get_current_losses())
        distributed.barrier()
        return {"model": args.model_key, "size": s, "option": args.option, "batch": b, "world": info.world_size,
                "device": str(device.type), "times": times, "cpu_times": cpu_times, "first_step_s": t_first,
                "peak_rss_mib": _peak_rss_mib(),
                "peak_cuda_mib": (torch.cuda.max_memory_allocated(device) / 2 ** 20) if device.type == "cuda" else None,
                "finite": all(v == v and abs(v) != float("inf") for v in losses.values()),
                "threads": torch.get_num_threads(), "thread_counts": thread_counts, "rank": info.rank,
                "profile": profile}
    finally:
        distributed.cleanup()



# ------------------------------------------------------------------------------------------------ --reference DIR
REFERENCE_FILES = ("options/train_options.py", "models/__init__.py")

# Run in a subprocess with the release checkout as the only project folder on sys.path (its packages are named like
# this project's: models, options, data, util). argv[1] is a JSON object of the measurement settings.
_REFERENCE_WORKER = r"""
import json, os, resource, statistics, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["root"])
os.chdir(cfg["root"])
import torch
sys.argv = ["train.py", *cfg["argv"]]
from options.train_options import TrainOptions
from models import create_model
opt = TrainOptions().parse()
torch.manual_seed(0)
model = create_model(opt)
model.setup(opt)
b, s = opt.batch_size, cfg["size"]
gen = torch.Generator().manual_seed(0)
batch = {"A": torch.rand(b, opt.input_nc, s, s, generator=gen) * 2 - 1,
         "B": torch.rand(b, opt.output_nc, s, s, generator=gen) * 2 - 1,
         "A_paths": [f"a{i}.png" for i in range(b)], "B_paths": [f"b{i}.png" for i in range(b)]}
times, cpu = [], []
first = None
for i in range(cfg["warmup"] + cfg["steps"]):
    t0, c0 = time.perf_counter(), time.process_time()
    model.set_input(batch)
    model.optimize_parameters()
    dt = time.perf_counter() - t0
    first = dt if first is None else first
    if i >= cfg["warmup"]:
        times.append(dt)
        cpu.append(time.process_time() - c0)
losses = {k: float(v) for k, v in model.get_current_losses().items()} if hasattr(model, "get_current_losses") else {}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = {"model": "reference", "size": s, "option": "eager", "batch": b, "world": 1, "device": "cpu",
          "times": times, "cpu_times": cpu, "first_step_s": first, "peak_rss_mib": peak, "peak_cuda_mib": None,
          "finite": all(v == v and abs(v) != float("inf") for v in losses.values()),
          "threads": torch.get_num_threads(), "rank": 0, "profile": None}
with open(os.path.join(cfg["result_dir"], "rank0.json"), "w") as f:
    json.dump(result, f)
"""


def reference_root(folder: Path) -> Optional[Path]:
    """The folder of the release's training code in a checkout ``folder``: ``folder`` itself or its
    ``PyramidPix2pix/`` subfolder (the BCI repository's layout), the first one holding :data:`REFERENCE_FILES`
    (pix2pix-family layout: ``options.train_options.TrainOptions``, ``models.create_model``); None if neither."""
    for root in (folder, folder / "PyramidPix2pix"):
        if all((root / f).is_file() for f in REFERENCE_FILES):
            return root
    return None


def reference_argv(args, size: int, tmp: Path) -> List[str]:
    """The release's training options of the benchmarked step: pyramid pix2pix (``--pattern L1_L2_L3_L4``),
    resnet_9blocks generator, basic PatchGAN, this run's batch (default 2, the BCI recipe), ngf/ndf, CPU."""
    return ["--dataroot", str(tmp / "nonexistent"), "--name", "bench_reference", "--checkpoints_dir", str(tmp / "ck"),
            "--model", "pix2pix", "--netG", "resnet_9blocks", "--netD", "basic", "--pattern", "L1_L2_L3_L4",
            "--batch_size", str(args.batch_size or 2), "--ngf", str(args.ngf),
            "--ndf", str(64 if args.ndf is None else args.ndf), "--gpu_ids", "-1"]


def run_reference(args, size: int) -> dict:
    """Time the release's training step (``model.set_input`` + ``model.optimize_parameters``) in a subprocess on
    synthetic inputs like the other rows, in the user's environment (none of this project's thread defaults)."""
    import shutil
    import tempfile

    root = reference_root(Path(args.reference))
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="reference_", dir=args.tmp))
    cfg = {"root": str(root), "argv": reference_argv(args, size, tmp), "size": size, "warmup": args.warmup,
           "steps": args.steps, "result_dir": str(tmp)}
    env = dict(_USER_ENV or os.environ)
    env.pop("PYTHONPATH", None)
    try:
        try:
            r = subprocess.run([sys.executable, "-c", _REFERENCE_WORKER, json.dumps(cfg)], cwd=root, env=env,
                               capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"model": "reference", "size": size, "option": "eager", "error": f"timed out after {args.timeout} s"}
        out = tmp / "rank0.json"
        if r.returncode != 0 or not out.is_file():
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return {"model": "reference", "size": size, "option": "eager", "error": f"exit {r.returncode}: {tail}"}
        return json.loads(out.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ driver
def _worker_cmd(args, model_key: str, size: int, option: str) -> List[str]:
    base = [str(Path(__file__).resolve()), "--worker", "--model_key", model_key, "--size", str(size),
            "--option", option, "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
            "--ngf", str(args.ngf), "--tmp", args.tmp, "--threads", str(args.threads),
            "--profile", str(args.profile)]
    if args.batch_size:
        base += ["--batch_size", str(args.batch_size)]
    if args.ndf is not None:
        base += ["--ndf", str(args.ndf)]
    if args.nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
                *base]
    return [sys.executable, *base]


# thread policies of --concurrent: environment changes of the benchmark processes (see util/threads.py)
POLICIES = {
    # this project's default: libgomp's wait policy, intra-op threads adapted to the other jobs (rebalance)
    "adaptive": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None, "VIRTUAL_IHC_THREAD_DEFAULTS": None},
    # the OpenMP library's default, a fixed thread count (as the authors' release runs)
    "libgomp": {"VIRTUAL_IHC_THREAD_DEFAULTS": "0", "OMP_WAIT_POLICY": None},
    # waiting threads sleep at once, fixed thread count (this project's default before the adaptive count)
    "passive": {"VIRTUAL_IHC_THREAD_DEFAULTS": "0", "OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"VIRTUAL_IHC_THREAD_DEFAULTS": "0", "OMP_WAIT_POLICY": "ACTIVE"},  # threads always spin
}
_USER_ENV: dict = {}  # the environment before configure_threads(): the release-style rows run in it


def _child_env(model_key: str, env_extra: Optional[dict] = None) -> dict:
    """Environment of a benchmark process: the classic reference runs as the release would (the user's environment,
    no thread defaults of this project), every other configuration with them; ``env_extra`` maps a name to a
    value or None (removed)."""
    base = dict(_USER_ENV or os.environ)
    if model_key == "classic":  # glibc malloc and libgomp's defaults, as the release runs
        base["VIRTUAL_IHC_THREAD_DEFAULTS"] = "0"
        base["VIRTUAL_IHC_ALLOCATOR"] = "system"
    env = dict(base, PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    for k, v in (env_extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _launch(args, model_key: str, size: int, option: str, env_extra: Optional[dict] = None):
    """Start one benchmark process; returns ``(Popen, result_dir)``."""
    import tempfile

    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    result_dir = Path(tempfile.mkdtemp(prefix="results_", dir=args.tmp))
    # each process writes its own file: several DDP ranks printing to one pipe could interleave their lines
    cmd = _worker_cmd(args, model_key, size, option) + ["--result_dir", str(result_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(model_key, env_extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return proc, result_dir


def _collect(args, proc, result_dir: Path, model_key: str, size: int, option: str) -> dict:
    """Wait for a process of :func:`_launch` and read its result (an ``error`` entry if it failed)."""
    import shutil

    try:
        try:
            _, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {"model": model_key, "size": size, "option": option,
                    "error": f"timed out after {args.timeout} s"}
        results = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(result_dir.glob("rank*.json"))]
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)
    if proc.returncode != 0 or not results:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": model_key, "size": size, "option": option, "error": f"exit {proc.returncode}: {tail}"}
    main = next((x for x in results if x.get("rank") == 0), results[0])
    if len(results) > 1:  # DDP: peak memory of the largest process
        main["peak_rss_mib"] = max(x["peak_rss_mib"] for x in results)
    return main


def _run_config(args, model_key: str, size: int, option: str, env_extra: Optional[dict] = None) -> dict:
    proc, result_dir = _launch(args, model_key, size, option, env_extra)
    return _collect(args, proc, result_dir, model_key, size, option)


def run_concurrent(args, model_key: str, size: int, option: str, n: int, policy: str) -> dict:
    """The shared-machine measurement of one configuration under one thread policy (:data:`POLICIES`): one process
    alone, then ``n`` identical processes started together. Returns ``{"solo": run, "together": [run, ...]}``
    (runs as :func:`_run_config` returns them)."""
    env = POLICIES[policy]
    solo = _run_config(args, model_key, size, option, env)
    started = [_launch(args, model_key, size, option, env) for _ in range(n)]
    together = [_collect(args, p, d, model_key, size, option) for p, d in started]
    return {"model": model_key, "size": size, "option": option, "policy": policy, "n": n, "solo": solo,
            "together": together}


def summarize_concurrent(groups: List[dict]) -> List[dict]:
    """Per (configuration, policy): the median solo step over repeats and each concurrent process's median step
    as a ratio to it (``ratios``: one per process and repeat; ``worst`` the largest); ``vs_best_solo``: the median
    step together over the fastest policy's solo step (a policy whose solo step already suffers from other load on
    the machine looks better in its own ratio than it is)."""
    out: dict = {}
    for g in groups:
        key = (g["model"], g["size"], g["option"], g["policy"], g["n"])
        row = out.setdefault(key, {"model": g["model"], "size": g["size"], "option": g["option"],
                                   "policy": g["policy"], "n": g["n"], "solo": [], "together": [], "ratios": [],
                                   "solo_cpu": [], "together_cpu": [], "errors": [], "solo_threads": set(),
                                   "together_threads": set()})
        bad = [r["error"] for r in [g["solo"], *g["together"]] if "error" in r]
        if bad:
            row["errors"] += bad
            continue
        solo = statistics.median(g["solo"]["times"])
        row["solo"].append(solo)
        row["solo_cpu"].append(statistics.median(g["solo"]["cpu_times"]))
        row["solo_threads"].update(g["solo"].get("thread_counts") or [g["solo"].get("threads")])
        for r in g["together"]:
            row["together_threads"].update(r.get("thread_counts") or [r.get("threads")])
            t = statistics.median(r["times"])
            row["together"].append(t)
            row["together_cpu"].append(statistics.median(r["cpu_times"]))
            row["ratios"].append(t / solo)
    rows = []
    for row in out.values():
        if row["ratios"]:
            row.update(solo_s=statistics.median(row["solo"]), together_s=statistics.median(row["together"]),
                       worst=max(row["ratios"]), median_ratio=statistics.median(row["ratios"]),
                       solo_cpu_s=statistics.median(row["solo_cpu"]),
                       together_cpu_s=statistics.median(row["together_cpu"]))
        rows.append(row)
    for row in rows:  # against the fastest solo step of the configuration over all policies
        solos = [r["solo_s"] for r in rows if "solo_s" in r and (r["model"], r["size"], r["option"]) ==
                 (row["model"], row["size"], row["option"])]
        if "together_s" in row:
            row["vs_best_solo"] = row["together_s"] / min(solos)
    return rows


def _counts(values) -> str:
    """Thread counts seen in the timed steps, e.g. ``1-2`` or ``2``."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return "?"
    return str(vals[0]) if vals[0] == vals[-1] else f"{vals[0]}-{vals[-1]}"


def concurrent_markdown(rows: List[dict], header: str) -> str:
    lines = [header, "",
             "| model | size | option | threads | solo step (s) | step with N together (s) | ratio to solo "
             "(median, worst) | together vs fastest solo | CPU s/step solo / together | intra-op threads solo / "
             "together |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ratios"]:
            lines.append(f"| {r['model']} | {r['size']} | {r['option']} | {r['policy']} | failed: "
                         f"{(r['errors'] or ['?'])[-1][:80]} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['size']} | {r['option']} | {r['policy']} | {r['solo_s']:.3f} | "
                     f"{r['n']} x {r['together_s']:.3f} | {r['median_ratio']:.2f}x, {r['worst']:.2f}x | "
                     f"{r['vs_best_solo']:.2f}x | "
                     f"{r['solo_cpu_s']:.2f} / {r['together_cpu_s']:.2f} | {_counts(r['solo_threads'])} / "
                     f"{_counts(r['together_threads'])} |")
    return "\n".join(lines) + "\n"


def _model_available(model_key: str) -> Optional[str]:
    import models
    from util.errors import UserError

    try:
        models.find_model_using_name(MODELS[model_key][1])
        return None
    except (ImportError, UserError) as e:
        return f"{type(e).__name__}: {e}"


def summarize(runs: List[dict]) -> List[dict]:
    """Group runs by (model, size, option): median step time over repeats (each run: median over its steps)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["model"], r["size"], r["option"]), []).append(r)
    rows = []
    for (model, size, option), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = {"model": model, "size": size, "option": option, "runs": len(ok)}
        if not ok:
            row["error"] = rs[-1].get("error", "failed")
        else:
            meds = [statistics.median(r["times"]) for r in ok]
            step = statistics.median(meds)
            world = ok[0].get("world", 1)
            row.update(step_s=step, steps_per_s=1.0 / step, images_per_s=ok[0]["batch"] * world / step,
                       batch=ok[0]["batch"], world=world, peak_rss_mib=max(r["peak_rss_mib"] for r in ok),
                       peak_cuda_mib=ok[0].get("peak_cuda_mib"), first_step_s=statistics.median(
                           [r["first_step_s"] for r in ok]), spread=(min(meds), max(meds)),
                       finite=all(r.get("finite", True) for r in ok))
            cpu = [statistics.median(r["cpu_times"]) for r in ok if r.get("cpu_times")]
            row["cpu_s"] = statistics.median(cpu) if cpu else None
        rows.append(row)
    for row in rows:
        base = next((x for x in rows if x["model"] == row["model"] and x["size"] == row["size"]
                     and x["option"] in ("eager", "fp32") and "step_s" in x), None)
        if base is not None and "step_s" in row:
            row["speedup"] = base["step_s"] / row["step_s"]
        ref = next((x for x in rows if x["model"] == "classic" and x["size"] == row["size"] and "step_s" in x), None)
        if ref is not None and "step_s" in row and row["model"] in ("pyramidpix2pix", "classic", "reference"):
            row["vs_classic"] = ref["step_s"] / row["step_s"]
        rel = next((x for x in rows if x["model"] == "reference" and x["size"] == row["size"] and "step_s" in x),
                   None)
        if rel is not None and "step_s" in row and row["model"] in ("pyramidpix2pix", "classic", "reference"):
            row["vs_reference"] = rel["step_s"] / row["step_s"]
    return rows


def to_markdown(rows: List[dict], header: str) -> str:
    lines = [header, "",
             "| model | size | option | batch x procs | step (s) | steps/s | images/s | speedup vs eager | vs classic step "
             "| vs release (--reference) | CPU s/step | peak RSS (MiB) | peak GPU (MiB) | first step (s) "
             "| runs (min-max step) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | {r['option']} | - | failed: {r['error'][:80]} "
                         "| | | | | | | | | | |")
            continue
        gpu = f"{r['peak_cuda_mib']:.0f}" if r.get("peak_cuda_mib") is not None else "-"
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        vc = f"{r['vs_classic']:.2f}x" if "vs_classic" in r else "-"
        vr = f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-"
        nan = "" if r["finite"] else " (non-finite loss!)"
        cpu = f"{r['cpu_s']:.2f}" if r.get("cpu_s") is not None else "-"
        lines.append(f"| {r['model']} | {r['size']} | {r['option']}{nan} | {r['batch']} x {r['world']} | "
                     f"{r['step_s']:.3f} | {r['steps_per_s']:.3f} | {r['images_per_s']:.2f} | {sp} | {vc} | {vr} | "
                     f"{cpu} | "
                     f"{r['peak_rss_mib']:.0f} | {gpu} | {r['first_step_s']:.1f} | {r['runs']} "
                     f"({r['spread'][0]:.3f}-{r['spread'][1]:.3f}) |")
    pyr = []
    for r in rows:
        if r["model"] == "pyramidpix2pix" and "step_s" in r:
            ref = next((x for x in rows if x["model"] == "pyramidpix2pix_L1" and x["size"] == r["size"]
                        and x["option"] == r["option"] and "step_s" in x), None)
            if ref is not None:
                pyr.append(f"| {r['size']} | {r['option']} | {ref['step_s']:.3f} | {r['step_s']:.3f} | "
                           f"{100 * (r['step_s'] / ref['step_s'] - 1):+.1f}% |")
    if pyr:
        lines += ["", "Pyramid cost (L1_L2_L3_L4 vs L1 only, same networks and batch):", "",
                  "| size | option | L1 step (s) | L1_L2_L3_L4 step (s) | overhead |", "|---|---|---|---|---|", *pyr]
    return "\n".join(lines) + "\n"


def insert_into_readme(readme: Path, table: str) -> None:
    """Replace the text between the bench markers of ``readme`` by ``table`` (atomic write).

    Raises:
        DataError: the file lacks the markers ``<!-- bench:start -->`` / ``<!-- bench:end -->`` (in that order).
    """
    from util.errors import DataError
    from util.fileio import atomic_write_text

    text = readme.read_text(encoding="utf-8")
    i, j = text.find(MARK_START), text.find(MARK_END)
    if i < 0 or j < i:
        raise DataError(f"'{readme}' has no '{MARK_START}' ... '{MARK_END}' markers to put the benchmark table "
                        "between (--readme)")
    atomic_write_text(readme, text[:i + len(MARK_START)] + "\n" + table + text[j:])


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="pyramidpix2pix,pyramidpix2pix_L1",
                   help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--sizes", default="256", help="comma-separated square image sizes in px (e.g. 256,512,1024)")
    p.add_argument("--options", default="eager,default",
                   help="comma-separated; each 'default' (train.py's own defaults: --fast_cpu on), 'eager' (--fast_cpu\n"
                        "off, no speed option) or '+'-joined channels_last, winograd, compile, bf16, fp16 (with\n"
                        "--fast_cpu off)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (median kept)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (use >= 2 with compile)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repetitions of every configuration")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--nproc", type=int, default=1, help="processes per configuration (torchrun DDP when > 1)")
    p.add_argument("--batch_size", type=int, default=0, help="per process; 0 = each model's default")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=None, help="default: each model's own (64; ASP's recipe: 32)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each run (0 = PyTorch default)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per run")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (atomic)")
    p.add_argument("--json", type=Path, default=None, help="write every run's raw measurements here (atomic)")
    p.add_argument("--readme", type=Path, default=None,
                   help=f"also put the table into this file between {MARK_START} and {MARK_END}")
    p.add_argument("--profile", type=int, default=0,
                   help="after the timed steps, profile one more step and log its top N operators (self CPU time)")
    p.add_argument("--tmp", default="/tmp/bench_train", help="scratch folder of the runs")
    p.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="also time the authors' release (a checkout of its code in DIR, or DIR/PyramidPix2pix) at\n"
                        "every size, interleaved with the other runs; row 'reference', column 'vs release'")
    p.add_argument("--concurrent", type=int, default=0, metavar="N",
                   help="shared-machine test: per configuration and --policies entry, one process alone, then N\n"
                        "identical processes started together; reports each one's step as a ratio to the solo step")
    p.add_argument("--policies", default="adaptive,libgomp",
                   help=f"with --concurrent: thread policies to compare, from {', '.join(POLICIES)}\n"
                        "(adaptive: this project's default, libgomp's wait policy and an intra-op thread count\n"
                        "that gives way to other jobs; libgomp: the library's defaults with a fixed thread count,\n"
                        "as the authors' release runs; passive: waiting threads sleep at once; active: always spin)")
    # internal: one configuration
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model_key", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--option", help=argparse.SUPPRESS)
    p.add_argument("--result_dir", help=argparse.SUPPRESS)
    return p


def _main(argv: Sequence[str]) -> int:
    from util.errors import OptionError
    from util.fileio import atomic_write_text
    from util.logging_setup import setup_logging

    args = build_parser().parse_args(list(argv))
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        result = run_worker(args)
        atomic_write_text(Path(args.result_dir) / f"rank{result['rank']}.json", json.dumps(result))
        return 0
    setup_logging(False)
    models_, sizes, opts = _csv(args.models), [int(s) for s in _csv(args.sizes)], _csv(args.options)
    for m in models_:
        if m not in MODELS:
            raise OptionError(f"--models: unknown model {m!r}; valid: {', '.join(MODELS)}")
    for o in opts:
        option_flags(o)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.nproc < 1 or args.concurrent < 0:
        raise OptionError("--steps and --repeats must be >= 1, --warmup >= 0, --nproc >= 1, --concurrent >= 0")
    policies = _csv(args.policies)
    for pol in policies:
        if pol not in POLICIES:
            raise OptionError(f"--policies: unknown policy {pol!r}; valid: {', '.join(POLICIES)}")
    if args.reference is not None and reference_root(args.reference) is None:
        raise OptionError(f"--reference: '{args.reference}' holds no release checkout (expected "
                          f"{' and '.join(REFERENCE_FILES)} in it or in its PyramidPix2pix/ folder)")
    if args.concurrent and (args.nproc > 1 or args.reference is not None):
        raise OptionError("--concurrent runs this project's single-process configurations; use it without --nproc "
                          "and --reference")
    configs, runs = [], []
    for m in models_:
        why = _model_available(m)
        if why:
            log.warning("model %s is not available (%s): skipped", m, why)
            runs.append({"model": m, "size": 0, "option": "-", "error": f"not available: {why}"})
            continue
        # the classic reference step has no speed options: one configuration per size
        configs += [(m, s, o) for s in sizes for o in (["eager"] if m == "classic" else opts)]
    if args.reference is not None:
        configs += [("reference", s, "eager") for s in sizes]
    t0 = time.time()
    if args.concurrent:
        return _main_concurrent(args, configs, policies, t0)
    for rep in range(args.repeats):
        for k, (m, s, o) in enumerate(configs):
            log.info("repeat %d/%d, run %d/%d: %s %d px %s", rep + 1, args.repeats, k + 1, len(configs), m, s, o)
            r = run_reference(args, s) if m == "reference" else _run_config(args, m, s, o)
            if "error" in r:
                log.warning("%s %d px %s failed: %s", m, s, o, r["error"])
            else:
                log.info("  median step %.3f s (steps %s), peak RSS %.0f MiB", statistics.median(r["times"]),
                         ", ".join(f"{t:.3f}" for t in r["times"]), r["peak_rss_mib"])
                if r.get("profile"):
                    log.info("  profile of one more step:\n%s", r["profile"])
            runs.append(r)
    import platform

    import torch

    ndf = args.ndf if args.ndf is not None else "model default (64; ASP 32)"
    header = (f"Training step benchmark (`scripts/bench_train.py`, {args.device}, {args.nproc} process(es), "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
              f"ngf/ndf {args.ngf}/{ndf}; {args.warmup} warmup + {args.steps} timed steps, "
              f"{args.repeats} interleaved repeat(s), medians; {time.strftime('%Y-%m-%d')}, {time.time() - t0:.0f} s)")
    table = to_markdown(summarize(runs), header)
    sys.stdout.write(table)
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        atomic_write_text(args.json, json.dumps(runs, indent=1) + "\n")
    if args.readme:
        insert_into_readme(args.readme, table)
    return 0


def _machine_header(args, what: str, t0: float) -> str:
    import platform

    import torch

    return (f"{what} (`scripts/bench_train.py`, {args.device}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}; ngf/ndf {args.ngf}/{64 if args.ndf is None else args.ndf}; "
            f"{args.warmup} warmup + "
            f"{args.steps} timed steps, {args.repeats} interleaved repeat(s), medians; {time.strftime('%Y-%m-%d')}, "
            f"{time.time() - t0:.0f} s)")


def _main_concurrent(args, configs, policies: List[str], t0: float) -> int:
    from util.fileio import atomic_write_text

    groups = []
    for rep in range(args.repeats):
        for m, s, o in configs:
            for pol in policies:
                log.info("repeat %d/%d: %s %d px %s, thread policy %s: alone, then %d together", rep + 1, args.repeats,
                         m, s, o, pol, args.concurrent)
                g = run_concurrent(args, m, s, o, args.concurrent, pol)
                for r in [g["solo"], *g["together"]]:
                    if "error" in r:
                        log.warning("  failed: %s", r["error"])
                if "error" not in g["solo"] and not any("error" in r for r in g["together"]):
                    solo = statistics.median(g["solo"]["times"])
                    log.info("  solo %.3f s; together %s", solo, ", ".join(
                        f"{statistics.median(r['times']):.3f} s ({statistics.median(r['times']) / solo:.2f}x)"
                        for r in g["together"]))
                groups.append(g)
    header = _machine_header(args, f"Shared-machine benchmark, {args.concurrent} identical trainings at once", t0)
    table = concurrent_markdown(summarize_concurrent(groups), header)
    sys.stdout.write(table)
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        atomic_write_text(args.json, json.dumps(groups, indent=1) + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns 0, or 2 with one stderr line on bad options or files."""
    from util.allocator import reexec_with_tcmalloc
    from util.threads import configure_threads

    reexec_with_tcmalloc(argv is None and __name__ == "__main__")  # first: the restarted process gets LD_PRELOAD back
    if not _USER_ENV:
        _USER_ENV.update(os.environ)  # before configure_threads(): the release-style rows run in the user's env
    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.logging_setup import run_cli

    return run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
