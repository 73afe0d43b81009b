"""Shared fixtures: a tiny BCI-layout dataset derived from the embedded real IHC image, and tiny training options."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

# tiny networks run fastest single-threaded (and do not thrash when the machine is busy)
torch.set_num_threads(1)

# tiny, fast networks for CPU tests (the real defaults are exercised by the layout tests and benchmarks)
TINY = ["--ngf", "8", "--ndf", "8", "--num_threads", "0", "--gpu_ids", "-1", "--display_id", "0"]


@pytest.fixture(scope="session")
def sample_bci(tmp_path_factory) -> Path:
    """A BCI-layout dataset (HE/{train,test}, IHC/{train,test}) of 64x64 derived pairs: 6 train, 3 test."""
    from scripts import make_sample_dataset

    out = tmp_path_factory.mktemp("sample") / "bci"
    assert make_sample_dataset.main(["--out", str(out), "--tile_size", "64", "--n_train", "6", "--n_test", "3",
                                     "--seed", "1"]) == 0
    return out


@pytest.fixture
def bci_copy(sample_bci, tmp_path) -> Path:
    """A private copy of the sample dataset that a test may damage."""
    dst = tmp_path / "bci"
    shutil.copytree(sample_bci, dst)
    return dst


def train_args(dataroot, ckpt, name="run", model="pix2pix", extra=()):
    return ["--dataroot", str(dataroot), "--checkpoints_dir", str(ckpt), "--name", name, "--model", model,
            "--n_epochs", "1", "--n_epochs_decay", "0", "--seed", "0", "--print_freq", "2", "--display_freq", "2",
            "--netG", "resnet_6blocks", "--preprocess", "none", *TINY, *extra]


@pytest.fixture(autouse=True)
def _isolate_logging():
    """Entry points configure the root logger (util.logging_setup); undo it after each test so that one test's
    INFO handler does not leak into another test's captured stderr."""
    import logging

    root = logging.getLogger()
    level = root.level
    yield
    for h in list(root.handlers):
        if getattr(h, "_virtual_ihc", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture(scope="module")
def tiny_stain_run(tmp_path_factory) -> Path:
    """A checkpoints folder with run 'tiny': an untrained resnet_6blocks generator (ngf 8, instance norm) saved as
    latest_net_G.pth plus its train_opt.json (with the training MPP), for the whole-slide staining tests."""
    import json

    from models.networks import define_G
    from util.checkpoint import save_network

    root = tmp_path_factory.mktemp("ckpt")
    net = define_G(3, 3, 8, "resnet_6blocks", "instance", False, "normal", 0.02)
    (root / "tiny").mkdir()
    save_network(net, root / "tiny" / "latest_net_G.pth")
    opt = {"model": "pix2pix", "netG": "resnet_6blocks", "ngf": 8, "norm": "instance", "input_nc": 3,
           "output_nc": 3, "no_dropout": True, "init_type": "normal", "init_gain": 0.02, "direction": "AtoB",
           "mpp": 0.46}
    (root / "tiny" / "train_opt.json").write_text(json.dumps(opt))
    return root
