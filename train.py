"""Train an image-to-image translation model (pix2pix, pyramid pix2pix, CycleGAN, pix2pixHD).

    python train.py --dataroot ./datasets/BCI --name bci_pyramid --model pyramidpix2pix --pattern L1_L2_L3_L4 --gpu_ids 0

See README.md for the options; ``python train.py --help`` lists them with their defaults.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional, Sequence

from tqdm import tqdm

log = logging.getLogger("train")


def _train(argv: Optional[Sequence[str]]) -> int:
    import data
    import models
    import options
    from util.logging_setup import setup_logging
    from util.visualizer import Visualizer

    opt = options.parse_train(argv)
    setup_logging(opt.verbose)
    options.seed_everything(opt.seed)
    dataset = data.create_dataset(opt)
    loader = data.create_dataloader(opt, dataset)
    model = models.create_model(opt)
    if hasattr(model, "validate_input_size") and len(dataset) > 0:
        item = dataset[0]
        model.validate_input_size(*item["B" if "B" in item else "A"].shape[-2:])
    model.setup(opt)
    start_epoch, total_iters = opt.epoch_count, 0
    if opt.continue_train:
        state = model.load_training_state(opt.epoch)
        start_epoch, total_iters = state["epoch"] + 1, state["total_iters"]
        if "data_rng" in state and getattr(loader, "generator", None) is not None:
            loader.generator.set_state(state["data_rng"])
        log.info("resumed from epoch %d (%d images seen)", state["epoch"], total_iters)
    exp_dir = options.save_options(opt)
    log.info("%s", options.format_options(opt))
    log.info("training %s on %d images (batch %d) from %s; options saved to %s",
             opt.model, len(dataset), opt.batch_size, opt.dataroot, exp_dir)
    visualizer = Visualizer(opt)
    last_epoch = opt.n_epochs + opt.n_epochs_decay

    def save(label, epoch):
        model.save_networks(label)
        extra = {"data_rng": loader.generator.get_state()} if getattr(loader, "generator", None) is not None else None
        model.save_training_state(label, epoch, total_iters, extra)

    t_start = time.time()
    for epoch in range(start_epoch, last_epoch + 1):
        visualizer.reset()
        model.train()
        t_data0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch}/{last_epoch}", unit="batch", leave=False, dynamic_ncols=True,
                   disable=None)
        for i, batch in enumerate(bar):
            t_iter0 = time.time()
            t_data = t_iter0 - t_data0
            n = batch["A"].shape[0]
            total_iters += n
            model.set_input(batch)
            model.optimize_parameters()
            model.check_finite(epoch, total_iters)
            if total_iters % opt.display_freq < n:
                model.compute_visuals()
                visualizer.display_current_results(model.get_current_visuals(), epoch,
                                                   total_iters % opt.update_html_freq < n)
            if total_iters % opt.print_freq < n:
                losses = model.get_current_losses()
                t_comp = (time.time() - t_iter0) / n
                visualizer.print_current_losses(epoch, total_iters, losses, t_comp, t_data)
                visualizer.plot_current_losses(epoch, (i + 1) / max(1, len(loader)), losses)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if total_iters % opt.save_latest_freq < n:
                log.info("saving the latest model (epoch %d, total_iters %d)", epoch, total_iters)
                model.save_networks(f"iter_{total_iters}" if opt.save_by_iter else "latest")
            t_data0 = time.time()
        model.check_finite(epoch, total_iters)
        losses = model.get_current_losses()
        model.metric = sum(losses.values()) if losses else 0.0
        lr = model.update_learning_rate()
        save("latest", epoch)
        if epoch % opt.save_epoch_freq == 0 or epoch == last_epoch:
            save(epoch, epoch)
        log.info("end of epoch %d / %d (%.1f s elapsed); next lr %.7f; %s", epoch, last_epoch, time.time() - t_start,
                 lr, ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
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
