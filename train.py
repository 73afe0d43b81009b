"""Train an image-to-image translation model (pix2pix, pyramid pix2pix, CycleGAN, pix2pixHD).

    python train.py --dataroot ./datasets/BCI --name bci_pyramid --model pyramidpix2pix --pattern L1_L2_L3_L4 --gpu_ids 0
    torchrun --nproc_per_node 2 train.py ... --gpu_ids 0 --amp bf16 --channels_last   # DDP, 2 GPUs

Speed and scale options (``--amp``, ``--channels_last``, ``--compile``, torchrun): docs/PERFORMANCE.md.

See README.md for the options; ``python train.py --help`` lists them with their defaults.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

log = logging.getLogger("train")


def _train(argv: Optional[Sequence[str]]) -> int:
    import options
    from util import distributed
    from util.logging_setup import setup_logging

    opt = options.parse_train(argv)
    setup_logging(opt.verbose)
    info = distributed.init_from_env(opt)
    if not info.is_main:  # one log for the whole job: the other processes only report problems
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _run(opt, info)
    finally:
        distributed.cleanup()


def _run(opt, info) -> int:
    import data
    import models
    import options
    from util import distributed
    from util.finite_guard import FiniteGuard
    from util.visualizer import Visualizer

    options.seed_everything(opt.seed)
    dataset = data.create_dataset(opt)
    sampler = distributed.make_sampler(dataset, opt)
    loader = data.create_dataloader(opt, dataset, sampler=sampler)
    model = models.create_model(opt)
    if hasattr(model, "validate_input_size") and len(dataset) > 0:
        item = dataset[0]
        model.validate_input_size(*item["B" if "B" in item else "A"].shape[-2:])
    if len(dataset) > 0:  # lazily built networks (CUT's netF) need a batch before loading and scheduling
        model.data_dependent_initialize(data.collate_checked([dataset[i] for i in range(min(opt.batch_size, len(dataset)))]))
    model.setup(opt)
    model.prepare_networks(opt)
    start_epoch, total_iters = opt.epoch_count, 0
    if opt.continue_train:
        state = model.load_training_state(opt.epoch)
        start_epoch, total_iters = state["epoch"] + 1, state["total_iters"]
        if "data_rng" in state and getattr(loader, "generator", None) is not None:
            loader.generator.set_state(state["data_rng"])
        log.info("resumed from epoch %d (%d images seen)", state["epoch"], total_iters)
    if info.distributed:  # same initial weights everywhere (DDP broadcasts rank 0's), own random stream per process
        base_seed = distributed.shared_seed(opt.seed)  # collective: every process calls it
        if info.rank > 0:
            options.seed_everything(base_seed + 7919 * info.rank + start_epoch)
    exp_dir = Path(opt.checkpoints_dir) / opt.name / "train_opt.json"
    if info.is_main:
        exp_dir = options.save_options(opt)
    log.info("%s", options.format_options(opt))
    log.info("training %s on %d images (batch %d per process x %d process%s = global batch %d) from %s; options "
             "saved to %s", opt.model, len(dataset), opt.batch_size, info.world_size,
             "es" if info.world_size > 1 else "", opt.batch_size * info.world_size, opt.dataroot, exp_dir)
    visualizer = Visualizer(opt)
    guard = FiniteGuard(model)
    last_epoch = opt.n_epochs + opt.n_epochs_decay

    def save(label, epoch):
        guard.check()  # never write a checkpoint of a state reached after a NaN/inf loss
        if not info.is_main:
            return
        model.save_networks(label)
        extra = {"data_rng": loader.generator.get_state()} if getattr(loader, "generator", None) is not None else None
        model.save_training_state(label, epoch, total_iters, extra)

    t_start = time.time()
    for epoch in range(start_epoch, last_epoch + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        visualizer.reset()
        model.train()
        model.set_epoch(epoch)
        t_data0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}/{last_epoch}", unit="batch", leave=False, dynamic_ncols=True,
                   disable=None if info.is_main else True)
        for i, batch in enumerate(bar):
            t_iter0 = time.time()
            t_data = t_iter0 - t_data0
            n = batch["A"].shape[0] * info.world_size  # images of this iteration over all processes
            total_iters += n
            model.set_input(batch)
            if opt.channels_last:
                model.inputs_to_channels_last()  # on the device, after the (pinned, non-blocking) copy
            model.train_step()
            guard.record(epoch, total_iters)  # CPU: checks now; CUDA: device-side flag, checked below
            if total_iters % opt.display_freq < n:
                guard.check()
                model.compute_visuals()
                visualizer.display_current_results(model.get_current_visuals(), epoch,
                                                   total_iters % opt.update_html_freq < n)
            if total_iters % opt.print_freq < n:
                guard.check()
                # the only host-device synchronisation of the loop; under DDP the mean over the processes
                losses = distributed.mean_losses(model.get_current_losses(), info.device)
                t_comp = (time.time() - t_iter0) / n
                visualizer.print_current_losses(epoch, total_iters, losses, t_comp, t_data)
                visualizer.plot_current_losses(epoch, (i + 1) / max(1, len(loader)), losses)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if total_iters % opt.save_latest_freq < n:
                guard.check()
                log.info("saving the latest model (epoch %d, total_iters %d)", epoch, total_iters)
                if info.is_main:
                    model.save_networks(f"iter_{total_iters}" if opt.save_by_iter else "latest")
            t_data0 = time.time()
        guard.check()
        losses = distributed.mean_losses(model.get_current_losses(), info.device)
        # the plateau policy steps on this value: the same on every process, so their learning rates agree
        model.metric = distributed.mean_scalar(sum(losses.values()) if losses else 0.0, info.device)
        lr = model.update_learning_rate()
        save("latest", epoch)
        if epoch % opt.save_epoch_freq == 0 or epoch == last_epoch:
            save(epoch, epoch)
        log.info("end of epoch %d / %d (%.1f s elapsed); next lr %.7f; %s", epoch, last_epoch, time.time() - t_start,
                 lr, ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    distributed.barrier()
    visualizer.close()
    log.info("training done: %d epochs in %.1f s; checkpoints in %s", last_epoch - start_epoch + 1,
             time.time() - t_start, exp_dir.parent)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point. ``argv`` defaults to ``sys.argv[1:]``; returns the exit status (2 on bad input)."""
    from util.errors import NonFiniteLossError
    from util.logging_setup import run_cli

    if argv is None:
        argv = sys.argv[1:]
    try:
        return run_cli(_train, argv)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
