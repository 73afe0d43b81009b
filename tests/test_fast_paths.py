"""Fast paths: channels-last (same numerics, same checkpoints), torch.compile fallback, test.py batches of same-size
images with --amp, and the training benchmark script (table, README markers, one real tiny run)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

import options
import test as test_script
import train
from models.pix2pix_model import Pix2PixModel
from scripts import bench_train
from tests.conftest import TINY, train_args
from util import fast_paths
from util.checkpoint import load_network, save_network
from util.errors import DataError, OptionError


def _model(extra=()):
    opt = options.parse_train(["--model", "pix2pix", "--netG", "resnet_6blocks", "--norm", "batch", "--no_dropout",
                               "--checkpoints_dir", "/nonexistent", *TINY, *extra])
    torch.manual_seed(0)
    m = Pix2PixModel(opt)
    m.setup(opt)
    return m, opt


def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(2, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(2, 3, size, size, generator=g) * 2 - 1,
            "A_paths": ["a", "b"], "B_paths": ["a", "b"]}


def test_channels_last_same_numerics_and_checkpoint_layout(tmp_path):
    plain, _ = _model()
    fast, opt = _model(["--channels_last"])
    fast.prepare_networks(opt)
    conv = fast.netG.model[1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.optimizer_G.param_groups[0]["params"][0] is fast.netG.model[1].weight  # same Parameter objects
    for step in range(2):
        plain.set_input(_batch(step))
        plain.train_step()
        fast.set_input(_batch(step))
        fast.inputs_to_channels_last()
        assert fast.real_A.is_contiguous(memory_format=torch.channels_last)
        fast.train_step()
    for (k, a), b in zip(plain.netG.state_dict().items(), fast.netG.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=k)
    # a channels-last network saves the classic state dict and loads into a plain network
    save_network(fast.netG, tmp_path / "G.pth")
    fresh, _ = _model()
    load_network(fresh.netG, tmp_path / "G.pth")
    for (k, a), b in zip(fresh.netG.state_dict().items(), fast.netG.state_dict().values()):
        assert torch.equal(a, b), k


def test_compile_unavailable_falls_back_to_eager_with_warning(monkeypatch, caplog, sample_bci, tmp_path):
    monkeypatch.setattr(fast_paths, "compile_support", lambda device: (False, "no toolchain (test)"))
    caplog.set_level(logging.WARNING)
    net = torch.nn.Conv2d(1, 1, 1)
    assert fast_paths.maybe_compile(net, "netX", torch.device("cpu")) is net
    assert any("no toolchain (test)" in r.getMessage() and "eager" in r.getMessage() for r in caplog.records)
    # train.py --compile still trains and writes plain checkpoints
    ck = tmp_path / "ck"
    assert train.main(train_args(sample_bci, ck, extra=["--compile", "--channels_last", "--max_dataset_size", "2"])) == 0
    sd = torch.load(ck / "run" / "latest_net_G.pth", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in sd)


def test_collate_same_size_groups_in_order():
    items = [{"A": torch.full((3, 4, 4), float(i)), "A_paths": f"p{i}"} for i in range(2)]
    items.insert(1, {"A": torch.zeros(3, 5, 4), "A_paths": "odd"})
    groups = test_script.collate_same_size(items)
    assert len(groups) == 2
    ref = default_collate([items[0], items[2]])
    assert torch.equal(groups[0]["A"], ref["A"]) and groups[0]["A_paths"] == ["p0", "p1"]
    assert groups[1]["A_paths"] == ["odd"] and groups[1]["A"].shape == (1, 3, 5, 4)


@pytest.fixture(scope="module")
def trained(sample_bci, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck")
    assert train.main(train_args(sample_bci, ck, name="p2p", extra=["--max_dataset_size", "2", "--norm", "batch"])) == 0
    return ck


def _mixed_sizes(sample_bci, root):
    for d in ("HE", "IHC"):
        (root / d / "test").mkdir(parents=True)
        files = sorted((sample_bci / d / "test").iterdir())
        for i, f in enumerate(files):
            img = Image.open(f)
            (img.crop((0, 0, 61, 45)) if i == 1 else img).save(root / d / "test" / f.name)
    return root


def _run_test(root, ck, out, extra=()):
    args = ["--dataroot", str(root), "--checkpoints_dir", str(ck), "--name", "p2p", "--results_dir", str(out),
            "--num_threads", "0", *extra]
    assert test_script.main(args) == 0
    d = out / "p2p" / "test_latest" / "images"
    return {p.name: np.asarray(Image.open(p)).astype(int) for p in sorted(d.glob("*_fake_B.png"))}


def test_test_batches_of_same_size_and_amp(sample_bci, trained, tmp_path):
    root = _mixed_sizes(sample_bci, tmp_path / "mixed")
    one = _run_test(root, trained, tmp_path / "b1")
    three = _run_test(root, trained, tmp_path / "b3", ["--batch_size", "3"])
    assert one.keys() == three.keys() and len(one) == 3
    assert {a.shape for a in three.values()} == {(64, 64, 3), (45, 61, 3)}  # native sizes kept
    for k in one:  # eval-mode batch norm: each image's result does not depend on its batch mates
        assert np.abs(one[k] - three[k]).max() <= 1, k
    bf = _run_test(root, trained, tmp_path / "bf", ["--batch_size", "3", "--amp", "bf16"])
    assert bf.keys() == one.keys()
    for k in one:  # bfloat16 inference: close to float32 (a few 8-bit levels), not identical
        assert bf[k].shape == one[k].shape and np.abs(bf[k] - one[k]).mean() < 4, k


def test_bench_option_parsing_summary_and_readme(tmp_path):
    assert bench_train.option_flags("channels_last+bf16") == ["--fast_cpu", "off", "--channels_last", "--amp", "bf16"]
    assert bench_train.option_flags("default") == []  # train.py's own defaults (--fast_cpu on)
    with pytest.raises(OptionError, match="fast"):
        bench_train.option_flags("fast")
    runs = [{"model": "pyramidpix2pix_L1", "size": 256, "option": "eager", "batch": 2, "times": t,
             "first_step_s": 1.0, "peak_rss_mib": 100.0} for t in ([2.0, 2.2, 9.0], [2.1, 2.1, 2.1], [3.0, 3.0])]
    runs += [{"model": "pyramidpix2pix_L1", "size": 256, "option": "channels_last", "batch": 2, "times": [1.6],
              "first_step_s": 1.0, "peak_rss_mib": 120.0},
             {"model": "pyramidpix2pix", "size": 256, "option": "eager", "batch": 2, "times": [2.31],
              "first_step_s": 1.0, "peak_rss_mib": 100.0}]
    rows = {(r["model"], r["option"]): r for r in bench_train.summarize(runs)}
    base = rows[("pyramidpix2pix_L1", "eager")]
    assert base["step_s"] == pytest.approx(2.2)  # median of the run medians 2.2, 2.1, 3.0
    assert base["images_per_s"] == pytest.approx(2 / 2.2)
    assert rows[("pyramidpix2pix_L1", "channels_last")]["speedup"] == pytest.approx(2.2 / 1.6)
    table = bench_train.to_markdown(list(rows.values()), "header")
    assert "+5.0%" in table  # pyramid overhead 2.31 / 2.2 - 1
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nend\n")
    bench_train.insert_into_readme(readme, table)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n<!-- bench:start -->\nheader") and text.endswith("end\n")
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(DataError, match="bench:start"):
        bench_train.insert_into_readme(tmp_path / "bare.md", table)


def test_bench_worker_measures_one_tiny_configuration(tmp_path):
    # the body of one benchmark subprocess, run in-process (the driver only adds the subprocess and the table)
    args = bench_train.build_parser().parse_args(
        ["--worker", "--model_key", "pyramidpix2pix", "--size", "32", "--option", "channels_last+bf16", "--ngf", "8",
         "--ndf", "8", "--steps", "2", "--warmup", "0", "--tmp", str(tmp_path)])
    r = bench_train.run_worker(args)
    assert r["batch"] == 2 and r["world"] == 1 and len(r["times"]) == 2 and all(t > 0 for t in r["times"])
    assert len(r["cpu_times"]) == 2 and all(t > 0 for t in r["cpu_times"])
    assert r["finite"] and r["peak_rss_mib"] > 50 and r["peak_cuda_mib"] is None
    row = bench_train.summarize([r])[0]
    assert row["step_s"] == pytest.approx(sorted(r["times"])[0] / 2 + sorted(r["times"])[1] / 2)


def test_cpu_allocator_tuning_sets_the_documented_glibc_parameters(monkeypatch):
    # the speed effect is measured by scripts/bench_train.py (glibc's own heuristics make a page-fault unit test
    # flaky); here: which mallopt(3) calls are made, once per process, and only on glibc
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(fast_paths.ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(fast_paths.platform, "system", lambda: "Linux")
    monkeypatch.setattr(fast_paths.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(fast_paths, "_ALLOCATOR_TUNED", [])
    fast_paths.configure_backends(torch.device("cpu"))
    assert fast_paths.tune_cpu_allocator() is True
    # M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 2 GiB - 1, M_TOP_PAD 64 MiB (<malloc.h> numbers -3, -1, -2)
    assert calls == [(-3, 32 * 2 ** 20), (-1, 2 ** 31 - 1), (-2, 64 * 2 ** 20)]
    monkeypatch.setattr(fast_paths, "_ALLOCATOR_TUNED", [])
    monkeypatch.setattr(fast_paths.platform, "libc_ver", lambda: ("", ""))  # musl, macOS: nothing to do
    assert fast_paths.tune_cpu_allocator() is False and len(calls) == 3
    monkeypatch.setattr(fast_paths, "_ALLOCATOR_TUNED", [])
    FakeLibc.mallopt = lambda self, param, value: 0  # glibc refusing a value
    monkeypatch.setattr(fast_paths.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert fast_paths.tune_cpu_allocator() is False


def test_bench_classic_reference_step_trains_and_profiles(tmp_path):
    # the reference step of the speed comparison: stock nn.Dropout, no fast paths, yet a real training step
    args = bench_train.build_parser().parse_args(
        ["--worker", "--model_key", "classic", "--size", "32", "--option", "eager", "--ngf", "8", "--ndf", "8",
         "--steps", "2", "--warmup", "0", "--profile", "5", "--tmp", str(tmp_path)])
    r = bench_train.run_worker(args)
    assert r["finite"] and len(r["times"]) == 2
    assert "convolution" in r["profile"]  # the operator table of one extra step
    bad = bench_train.build_parser().parse_args(
        ["--worker", "--model_key", "classic", "--size", "32", "--option", "channels_last", "--tmp", str(tmp_path)])
    with pytest.raises(OptionError, match="classic"):
        bench_train.run_worker(bad)
    # its step updates both networks (it is a real step, not a no-op)
    import models

    opt = options.parse_train([*bench_train.MODELS["classic"], "--dataroot", "/nonexistent", "--checkpoints_dir",
                               str(tmp_path / "ck"), "--ngf", "8", "--ndf", "8", "--display_id", "0"])
    torch.manual_seed(0)
    model = models.create_model(opt)
    model.setup(opt)
    step = bench_train.classic_step(model)
    assert not any(isinstance(m, bench_train_dropout()) for m in model.netG.modules())
    model.set_input(_batch(size=32))
    g0 = [p.detach().clone() for p in model.netG.parameters()]
    d0 = [p.detach().clone() for p in model.netD.parameters()]
    step()
    assert any(not torch.equal(a, p) for a, p in zip(g0, model.netG.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(d0, model.netD.parameters()))
    rows = bench_train.summarize([dict(r, model="classic", size=32, option="eager", batch=2),
                                  dict(r, model="pyramidpix2pix", size=32, option="eager", batch=2,
                                       times=[t / 2 for t in r["times"]])])
    assert {x["model"]: x["vs_classic"] for x in rows}["pyramidpix2pix"] == pytest.approx(2.0)


def bench_train_dropout():
    from models.networks.dropout import Dropout

    return Dropout


def test_bench_driver_collects_every_ddp_rank(tmp_path):
    # 2 torchrun processes (gloo on CPU): each rank's result arrives intact (they once shared one stdout pipe)
    args = bench_train.build_parser().parse_args(
        ["--nproc", "2", "--ngf", "8", "--ndf", "8", "--steps", "1", "--warmup", "0", "--tmp", str(tmp_path)])
    r = bench_train._run_config(args, "pyramidpix2pix", 32, "eager")
    assert "error" not in r, r.get("error")
    assert r["world"] == 2 and r["rank"] == 0 and len(r["times"]) == 1 and r["finite"]
    assert not list(tmp_path.glob("results_*"))  # the per-run result folder is removed


# ------------------------------------------------------------------------------------------------ issue 19: bench
_FAKE_OPTIONS = '''
import argparse


class TrainOptions:
    def parse(self):
        p = argparse.ArgumentParser()
        for name in ("dataroot", "name", "checkpoints_dir", "model", "netG", "netD", "pattern", "gpu_ids"):
            p.add_argument("--" + name)
        for name in ("batch_size", "ngf", "ndf"):
            p.add_argument("--" + name, type=int)
        p.add_argument("--input_nc", type=int, default=3)
        p.add_argument("--output_nc", type=int, default=3)
        return p.parse_args()
'''
_FAKE_MODELS = '''
import torch


class Tiny:
    def __init__(self, opt):
        self.opt = opt
        self.net = torch.nn.Conv2d(opt.input_nc, opt.output_nc, 3, padding=1)
        self.optimizer = torch.optim.Adam(self.net.parameters())

    def setup(self, opt):
        assert opt.pattern == "L1_L2_L3_L4" and opt.model == "pix2pix" and opt.gpu_ids == "-1"

    def set_input(self, batch):
        self.a, self.b = batch["A"], batch["B"]

    def optimize_parameters(self):
        self.optimizer.zero_grad()
        self.loss = (self.net(self.a) - self.b).abs().mean()
        self.loss.backward()
        self.optimizer.step()

    def get_current_losses(self):
        return {"G_L1": float(self.loss)}


def create_model(opt):
    return Tiny(opt)
'''


def _fake_release(root):
    """A folder laid out like the BCI repository (PyramidPix2pix/options, PyramidPix2pix/models) whose 'release'
    is a one-convolution model: enough to run the --reference driver, not a copy of the release."""
    code = root / "PyramidPix2pix"
    for pkg, text in (("options", _FAKE_OPTIONS), ("models", "")):
        (code / pkg).mkdir(parents=True)
        (code / pkg / "__init__.py").write_text(text if pkg == "models" else "")
    (code / "options" / "train_options.py").write_text(_FAKE_OPTIONS)
    (code / "models" / "__init__.py").write_text(_FAKE_MODELS)
    # a module named like one of this project's: the release's own must win on its sys.path
    (code / "util").mkdir()
    (code / "util" / "__init__.py").write_text("RELEASE = True\n")
    return code


def test_bench_reference_times_a_release_checkout_in_its_own_process(tmp_path):
    code = _fake_release(tmp_path / "BCI")
    assert bench_train.reference_root(tmp_path / "BCI") == code and bench_train.reference_root(code) == code
    assert bench_train.reference_root(tmp_path) is None
    args = bench_train.build_parser().parse_args(["--reference", str(tmp_path / "BCI"), "--steps", "2", "--warmup",
                                                  "1", "--tmp", str(tmp_path / "scratch")])
    r = bench_train.run_reference(args, 16)
    assert "error" not in r, r
    assert r["model"] == "reference" and r["batch"] == 2 and r["size"] == 16 and len(r["times"]) == 2
    assert r["finite"] and r["peak_rss_mib"] > 10
    # the table: the release row and each pyramid row's ratio to it
    classic = {"model": "classic", "size": 16, "option": "eager", "batch": 2, "times": [3.0], "first_step_s": 3.0,
               "peak_rss_mib": 1.0}
    fast = dict(classic, model="pyramidpix2pix", option="channels_last+winograd", times=[1.5])
    rows = {r_["model"]: r_ for r_ in bench_train.summarize([dict(r, times=[6.0]), classic, fast])}
    assert rows["pyramidpix2pix"]["vs_reference"] == pytest.approx(4.0)
    assert rows["classic"]["vs_reference"] == pytest.approx(2.0) and rows["reference"]["vs_classic"] == 0.5
    assert "| 4.00x |" in bench_train.to_markdown(list(rows.values()), "h")


def test_bench_reference_folder_without_the_release_is_refused(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    assert bench_train.main(["--reference", str(tmp_path / "other"), "--tmp", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--reference" in err and "options/train_options.py" in err and "Traceback" not in err


def test_bench_concurrent_ratios_and_environments():
    # each process's median step over the solo median of the same group; the worst ratio over processes and repeats
    def run(times, cpu=1.0, threads=2):
        return {"times": times, "cpu_times": [cpu] * len(times), "thread_counts": [threads] * len(times)}

    groups = [{"model": "pyramidpix2pix", "size": 256, "option": "eager", "policy": "passive", "n": 2,
               "solo": run([2.0, 2.0, 9.0]), "together": [run([4.0, 4.2]), run([5.0])]},
              {"model": "pyramidpix2pix", "size": 256, "option": "eager", "policy": "passive", "n": 2,
               "solo": run([3.0]), "together": [run([6.0], threads=1), run([6.3])]},
              {"model": "pyramidpix2pix", "size": 256, "option": "eager", "policy": "libgomp", "n": 2,
               "solo": run([2.0]), "together": [run([10.0]), {"error": "exit 1: boom"}]}]
    rows = {r["policy"]: r for r in bench_train.summarize_concurrent(groups)}
    p = rows["passive"]
    assert p["ratios"] == pytest.approx([2.05, 2.5, 2.0, 2.1]) and p["worst"] == pytest.approx(2.5)
    assert p["solo_s"] == pytest.approx(2.5) and p["median_ratio"] == pytest.approx(2.075)
    assert rows["libgomp"]["errors"] == ["exit 1: boom"] and not rows["libgomp"]["ratios"]
    table = bench_train.concurrent_markdown(list(rows.values()), "h")
    assert "2.08x, 2.50x" in table and "failed: exit 1: boom" in table
    assert "| 2 / 1-2 |" in table  # intra-op threads of the timed steps: solo / together
    # against the fastest solo step of any policy: a slow solo (spinning under load) does not flatter the pair
    groups.append(dict(groups[0], policy="active", solo=run([10.0]), together=[run([12.0]), run([14.0])]))
    rows = {r["policy"]: r for r in bench_train.summarize_concurrent(groups)}
    assert rows["active"]["worst"] == pytest.approx(1.4) and rows["active"]["vs_best_solo"] == pytest.approx(13 / 2.5)
    assert rows["passive"]["vs_best_solo"] == pytest.approx(5.5 / 2.5)  # median of 4.1, 5.0, 6.0, 6.3
    # the environments: policies on top of the user's; the release-style rows without this project's defaults
    env = bench_train._child_env("pyramidpix2pix", bench_train.POLICIES["libgomp"])
    assert env["VIRTUAL_IHC_THREAD_DEFAULTS"] == "0" and "OMP_WAIT_POLICY" not in env
    assert bench_train._child_env("pyramidpix2pix", bench_train.POLICIES["active"])["OMP_WAIT_POLICY"] == "ACTIVE"
    # this project's default: no wait policy, no fixed thread count, thread defaults on (the count adapts)
    env = bench_train._child_env("pyramidpix2pix", bench_train.POLICIES["adaptive"])
    assert not {"OMP_WAIT_POLICY", "OMP_NUM_THREADS", "VIRTUAL_IHC_THREAD_DEFAULTS"} & set(env)
    assert bench_train._child_env("classic")["VIRTUAL_IHC_THREAD_DEFAULTS"] == "0"
    assert "VIRTUAL_IHC_THREAD_DEFAULTS" not in bench_train._child_env("pyramidpix2pix")
