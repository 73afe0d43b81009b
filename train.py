"""Train an image-to-image translation model (pix2pix, pyramid pix2pix, CycleGAN, pix2pixHD).

    python train.py --dataroot ./datasets/BCI --name bci_pyramid --model pyramidpix2pix --pattern L1_L2_L3_L4 --gpu_ids 0
    torchrun --nproc_per_node 2 train.py ... --gpu_ids 0 --amp bf16 --channels_last   # DDP, 2 GPUs

Speed and scale options (``--amp``, ``--channels_last``, ``--compile``, torchrun): docs/PERFORMANCE.md.

See README.md for the options; ``python train.py --help`` lists them with their defaults.
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C while the imports below load: one line and exit 130, not a traceback
    from util.logging_setup import exit_on_early_interrupt

    exit_on_early_interrupt("train.py")

import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

log = logging.getLogger("train")


class _Progress:
    """What the Ctrl-C message names: the last complete checkpoint set (of this run, or found when it started)."""

    last_set = "none"


def _train(argv: Optional[Sequence[str]]) -> int:
    import options
    from util import distributed
    from util.logging_setup import setup_logging

    opt = options.parse_train(argv)
    setup_logging(opt.verbose)
    if opt.fast_cpu_applied:
        log.info("--fast_cpu on (CPU float32 training): %s; --fast_cpu off keeps direct NCHW convolutions",
                 " ".join(opt.fast_cpu_applied))
    info = distributed.init_from_env(opt)
    if not info.is_main:  # one log for the whole job: the other processes only report problems
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _run(opt, info)
    finally:
        distributed.cleanup()


def _run(opt, info) -> int:
    from util.checkpoint import open_set, recover_sets
    from util.errors import CheckpointError
    from util.run_lock import ExperimentLock

    exp = Path(opt.checkpoints_dir) / opt.name
    created = not exp.exists()
    lock = None
    if info.is_main:  # one training per experiment folder; it alone cleans up interrupted saves
        lock = ExperimentLock(exp)
        recover_sets(exp)
        try:
            _Progress.last_set = open_set(exp, "latest", warn_legacy=False).describe()
        except CheckpointError:
            _Progress.last_set = "none"
    try:
        return _loop(opt, info, exp)
    finally:
        if lock is not None:
            lock.release()
            # a run that stopped before writing anything (bad data) leaves no experiment folder behind
            if created and {p.name for p in exp.iterdir()} == {".train.lock"}:
                (exp / ".train.lock").unlink()
                exp.rmdir()


def _loop(opt, info, exp: Path) -> int:
    import random as _random

    import data
    import models
    import options
    from data.sampling import SeededItems, training_sampler
    from data.transforms import item_generator
    from util import distributed
    from util.checkpoint import delete_set, list_sets
    from util.finite_guard import FiniteGuard
    from util.visualizer import Visualizer

    options.seed_everything(opt.seed)
    # the data order and augmentation draws come from this seed alone (data/sampling.py); under torchrun every
    # process agrees on it
    data_seed = distributed.shared_seed(opt.seed) if info.distributed else (
        opt.seed if opt.seed is not None else _random.SystemRandom().randrange(2 ** 31))
    dataset = data.create_dataset(opt)
    model = models.create_model(opt)
    if hasattr(model, "validate_input_size") and len(dataset) > 0:
        item = dataset[0]
        model.validate_input_size(*item["B" if "B" in item else "A"].shape[-2:])
    if len(dataset) > 0:  # lazily built networks (CUT's netF) need a batch before loading and scheduling
        with item_generator(data_seed):  # keeps the global random streams untouched
            first = data.collate_checked([dataset[i] for i in range(min(opt.batch_size, len(dataset)))])
        model.data_dependent_initialize(first)
    model.setup(opt)
    model.prepare_networks(opt)
    start_epoch, total_iters, skip_items = opt.epoch_count, 0, 0
    if opt.continue_train:
        state = model.load_training_state(opt.epoch)
        cs = model.loaded_set
        total_iters = state["total_iters"]
        saved_batch = int((cs.get("options") or {}).get("batch_size", opt.batch_size))
        # items of the unfinished epoch this process has trained on (older sets count batches)
        skip_items = int(state.get("epoch_items", int(state.get("epoch_iter", 0)) * saved_batch))
        start_epoch = state["epoch"] if skip_items else state["epoch"] + 1
        if skip_items and saved_batch != opt.batch_size:
            log.warning("resuming a mid-epoch set written with --batch_size %d using --batch_size %d: the epoch "
                        "continues after the same %d items, but the run will not be bit-identical to an "
                        "uninterrupted one", saved_batch, opt.batch_size, skip_items)
        later = sorted(int(m["label"]) for m in list_sets(exp)
                       if str(m.get("label", "")).isdigit() and int(m["label"]) >= start_epoch)
        if later:
            log.warning("checkpoint sets %s are from a later point of an earlier run; they are replaced as this run "
                        "reaches those epochs", ", ".join(map(str, later)))
        if "data_seed" in state:
            data_seed = int(state["data_seed"])
        else:
            log.warning("checkpoint set '%s' has no data seed (written before checkpoint sets): the data order of the "
                        "resumed epochs differs from an uninterrupted run's", opt.epoch)
        where = (f"epoch {start_epoch}, batch {skip_items // opt.batch_size + 1}" if skip_items
                 else f"epoch {start_epoch}")
        log.info("resumed from checkpoint set %s; continuing at %s", cs.describe(), where)
    sampler = training_sampler(dataset, opt, data_seed)
    loader = data.create_dataloader(opt, SeededItems(dataset), sampler=sampler)
    if info.distributed:  # same initial weights everywhere (DDP broadcasts rank 0's), own random stream per process
        base_seed = distributed.shared_seed(opt.seed)  # collective: every process calls it
        if info.rank > 0:
            options.seed_everything(base_seed + 7919 * info.rank + start_epoch)
    exp_opt = exp / "train_opt.json"
    if info.is_main:
        exp_opt = options.save_options(opt)
    # the full option dump is in train_opt.txt; on screen only with --verbose
    log.debug("%s", options.format_options(opt))
    log.info("training %s on %d images (batch %d per process x %d process%s = global batch %d) from %s; options "
             "saved to %s", opt.model, len(dataset), opt.batch_size, info.world_size,
             "es" if info.world_size > 1 else "", opt.batch_size * info.world_size, opt.dataroot,
             exp_opt.with_suffix(".txt"))
    visualizer = Visualizer(opt)
    guard = FiniteGuard(model)
    last_epoch = opt.n_epochs + opt.n_epochs_decay
    if start_epoch > last_epoch:
        log.warning("nothing to train: the checkpoint set is at epoch %d and --n_epochs + --n_epochs_decay is %d",
                    start_epoch - 1, last_epoch)
    opt_dict = options.options_to_dict(opt)

    def committed(manifest):  # called right after the commit rename: from then on this set is what a resume uses
        from util.checkpoint import CheckpointSet

        _Progress.last_set = CheckpointSet(exp, manifest["label"], manifest, {}).describe()

    def save(label, epoch, epoch_items=0):
        guard.check()  # never write a checkpoint of a state reached after a NaN/inf loss
        if not info.is_main:
            return
        model.save_set(label, epoch, total_iters, -(-epoch_items // opt.batch_size), epoch_items,
                       extra={"data_seed": int(data_seed)}, options=opt_dict, on_commit=committed)
        if opt.keep_last > 0 and isinstance(label, int):
            # the K most recently written epoch sets stay (never the one just written)
            sets = sorted((m for m in list_sets(exp) if str(m.get("label", "")).isdigit()),
                          key=lambda m: int(str(m.get("set_id", "0")).split("-")[0], 16))
            for m in sets[:-opt.keep_last]:
                if m["label"] != str(label):
                    delete_set(exp, m["label"])
                    log.info("removed checkpoint set '%s' (--keep_last %d)", m["label"], opt.keep_last)

    t_start = time.time()
    from util.progress import ProgressReporter
    from util.threads import rebalance

    progress = ProgressReporter(start_epoch, last_epoch, len(loader), opt.progress_interval,
                                enabled=None if info.is_main else False)
    for epoch in range(start_epoch, last_epoch + 1):
        sampler.set_epoch(epoch)
        items_before = skip_items if epoch == start_epoch else 0
        sampler.set_start(items_before)
        done_before = items_before // opt.batch_size
        visualizer.reset()
        model.train()
        model.set_epoch(epoch)
        t_data0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}/{last_epoch}", unit="batch", leave=False, dynamic_ncols=True,
                   disable=None if info.is_main else True)
        for j, batch in enumerate(bar):
            i = done_before + j
            t_iter0 = time.time()
            t_data = t_iter0 - t_data0
            n = batch["A"].shape[0] * info.world_size  # images of this iteration over all processes
            total_iters += n
            model.set_input(batch)
            if opt.channels_last:
                model.inputs_to_channels_last()  # on the device, after the (pinned, non-blocking) copy
            model.train_step()
            rebalance()  # fewer intra-op threads while other jobs use cores (util/threads.py)
            guard.record(epoch, total_iters)  # CPU: checks now; CUDA: device-side flag, checked below
            if total_iters % opt.display_freq < n:
                guard.check()
                model.compute_visuals()
                visualizer.display_current_results(model.get_current_visuals(), epoch,
                                                   total_iters % opt.update_html_freq < n, step=total_iters)
            if total_iters % opt.print_freq < n:
                guard.check()
                # the only host-device synchronisation of the loop; under DDP the mean over the processes
                losses = distributed.mean_losses(model.get_current_losses(), info.device)
                t_comp = (time.time() - t_iter0) / n
                visualizer.print_current_losses(epoch, total_iters, losses, t_comp, t_data)
                visualizer.plot_current_losses(epoch, (i + 1) / max(1, sampler.share() // opt.batch_size), losses)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if total_iters % opt.save_latest_freq < n and j + 1 < len(loader):  # the epoch end saves anyway
                log.info("saving the latest model (epoch %d, batch %d, total_iters %d)", epoch, i + 1, total_iters)
                save(f"iter_{total_iters}" if opt.save_by_iter else "latest", epoch,
                     items_before + (j + 1) * opt.batch_size)
            progress.update(epoch, i, n)
            t_data0 = time.time()
        guard.check()
        losses = distributed.mean_losses(model.get_current_losses(), info.device)
        # the plateau policy steps on this value: the same on every process, so their learning rates agree
        model.metric = distributed.mean_scalar(sum(losses.values()) if losses else 0.0, info.device)
        lr = model.update_learning_rate()
        visualizer.log_scalars({"lr": lr}, total_iters)  # --use_tensorboard / --use_wandb
        # the numbered set first: a kill between the two leaves 'latest' older, and resuming from it passes this
        # epoch's end again and rewrites the numbered set (the other order would lose it for good)
        if epoch % opt.save_epoch_freq == 0 or epoch == last_epoch:
            save(epoch, epoch)
        save("latest", epoch)
        log.info("end of epoch %d / %d (%.1f s elapsed); next lr %.7f; %s", epoch, last_epoch, time.time() - t_start,
                 lr, ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    distributed.barrier()
    visualizer.close()
    log.info("training done: %d epochs in %.1f s; checkpoints in %s", max(0, last_epoch - start_epoch + 1),
             time.time() - t_start, exp)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point. ``argv`` defaults to ``sys.argv[1:]``; returns the exit status: 0 done, 2 bad input or a file
    that cannot be read or written (one ``train.py: error: ...`` line), 3 a non-finite loss (no checkpoint of that
    state is written), 130 interrupted (Ctrl-C; the line names the last complete checkpoint set)."""
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.errors import NonFiniteLossError
    from util.logging_setup import run_cli

    if argv is None:
        argv = sys.argv[1:]
    _Progress.last_set = "none"
    try:
        return run_cli(_train, argv, prog="train.py",
                       on_interrupt=lambda: f"last complete checkpoint: {_Progress.last_set}")
    except NonFiniteLossError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
