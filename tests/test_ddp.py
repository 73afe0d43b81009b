"""Distributed data parallel on CPU (gloo) through torchrun: 2 processes x batch 1 train to the same weights as one
process x batch 2 on the same samples, and checkpoints move between DDP and single-process runs (--continue_train).

``--norm none`` so that every parameter gets a true gradient: with instance norm the bias of a convolution followed
by InstanceNorm has a mathematically zero gradient, and Adam turns its rounding noise into +-lr steps that differ
between any two summation orders (those biases do not affect the output). ``--serial_batches --no_flip --no_dropout``
make both runs see the same samples with no randomness; rank r takes items r, r+2, ... (DistributedSampler).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from tests.conftest import train_args

REPO = Path(__file__).resolve().parents[1]
SAME = ["--max_dataset_size", "4", "--norm", "none", "--no_dropout", "--serial_batches", "--no_flip"]


def _args(root, ck, name, epochs, decay, batch, extra=()):
    return train_args(root, ck, name=name, extra=["--n_epochs", str(epochs), "--n_epochs_decay", str(decay),
                                                  "--batch_size", str(batch), *SAME, *extra])


def _torchrun(args, timeout=150):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "train.py"), *args]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stderr


def _assert_same_weights(dir_a, dir_b, atol=1e-5):
    for net in ("G", "D"):
        a = torch.load(dir_a / f"latest_net_{net}.pth", weights_only=True)
        b = torch.load(dir_b / f"latest_net_{net}.pth", weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=f"{net} {k}")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_equal_one_process_and_checkpoints_interchange(sample_bci, tmp_path):
    ck = tmp_path / "ck"
    # reference: one process, batch 2, epoch 1; and a straight 2-epoch run
    assert train.main(_args(sample_bci, ck, "single", 1, 0, 2)) == 0
    assert train.main(_args(sample_bci, ck, "straight", 1, 1, 2)) == 0
    epoch1 = torch.load(ck / "single" / "latest_net_G.pth", weights_only=True)

    # 2 processes x batch 1 on the same 4 images
    err = _torchrun(_args(sample_bci, ck, "ddp", 1, 0, 1))
    assert "global batch 2" in err
    _assert_same_weights(ck / "single", ck / "ddp")
    # only rank 0 wrote the log: one line per print (iterations 2 and 4 of 4 images, global count)
    log_lines = [l for l in (ck / "ddp" / "loss_log.txt").read_text().splitlines() if l.startswith("(epoch")]
    assert len(log_lines) == 2 and "iters: 2," in log_lines[0] and "iters: 4," in log_lines[1]
    state = torch.load(ck / "ddp" / "latest_state.pth", weights_only=True)
    assert state["total_iters"] == 4 and state["epoch"] == 1

    # a DDP checkpoint resumes in one process, a single-process checkpoint resumes under DDP: both match straight
    ck2 = tmp_path / "ck2"
    shutil.copytree(ck / "ddp", ck2 / "from_ddp")
    shutil.copytree(ck / "single", ck2 / "from_single")
    assert train.main(_args(sample_bci, ck2, "from_ddp", 1, 1, 2, ["--continue_train"])) == 0
    _torchrun(_args(sample_bci, ck2, "from_single", 1, 1, 1, ["--continue_train"]))
    _assert_same_weights(ck / "straight", ck2 / "from_ddp")
    _assert_same_weights(ck / "straight", ck2 / "from_single")
    straight = torch.load(ck / "straight" / "latest_net_G.pth", weights_only=True)
    # the tolerance is meaningful: epoch 2 (lr 1e-4, 2 steps) moves weights 10x more than it
    assert max((straight[k] - epoch1[k]).abs().max().item() for k in epoch1) > 1e-4


def test_env_ranks_reads_torchrun_variables():
    from util.distributed import env_ranks
    from util.errors import OptionError

    assert env_ranks({}) == (0, 1, 0)
    assert env_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(OptionError, match="LOCAL_RANK"):
        env_ranks({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(OptionError, match="WORLD_SIZE"):
        env_ranks({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"})
    with pytest.raises(OptionError, match="inconsistent"):
        env_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_single_process_sets_rank_zero_and_wraps_nothing():
    from util import distributed

    class Opt:
        gpu_ids: list = []
        device = torch.device("cpu")

    opt = Opt()
    info = distributed.init_from_env(opt) if not any(k in os.environ for k in distributed.ENV_VARS) else None
    if info is None:
        pytest.skip("running under torchrun")
    assert (opt.rank, opt.world_size, opt.distributed) == (0, 1, False) and info.is_main
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(net, info.device) is net and distributed.make_sampler([1, 2], opt) is None
