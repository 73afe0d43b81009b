"""--use_tensorboard / --use_wandb: the logged values are read back from the event files and the offline run folder
and compared with loss_log.txt, the learning-rate schedule and metrics.json."""
import json
import re
import struct
import sys

import pytest

import train
from tests.conftest import train_args
from util.errors import OptionError


def _loss_log(path):
    """{(total_iters, name): value} from loss_log.txt (3 decimals)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\(epoch: \d+, iters: (\d+), .*?\) (.*)", line)
        if m:
            for name, v in re.findall(r"(\S+): (-?[\d.]+)", m.group(2)):
                out[(int(m.group(1)), name)] = float(v)
    return out


def test_tensorboard_events_hold_losses_lr_and_images(sample_bci, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = train_args(sample_bci, tmp_path / "ck", extra=("--use_tensorboard", "--n_epochs_decay", "1"))
    assert train.main(args) == 0
    exp = tmp_path / "ck" / "run"
    acc = EventAccumulator(str(exp / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    logged = _loss_log(exp / "loss_log.txt")
    assert logged
    for (step, name), v in logged.items():
        ev = {e.step: e.value for e in acc.Scalars(f"loss/{name}")}
        assert ev[step] == pytest.approx(v, abs=5e-4)
    lr = [(e.step, e.value) for e in acc.Scalars("lr")]
    # linear policy, 1 + 1 epochs: lr after epoch 1 = 2e-4 * (1 - 1/2), after epoch 2 = 0 (README formula)
    assert [v for _, v in lr] == pytest.approx([1e-4, 0.0], abs=1e-9) and lr[0][0] == 6 and lr[1][0] == 12
    tags = acc.Tags()["images"]
    assert {"images/real_A", "images/fake_B", "images/real_B"} <= set(tags)
    img = acc.Images("images/fake_B")[-1]
    assert (img.width, img.height) == (64, 64)


def _wandb_records(run_dir):
    """Protobuf records of an offline run file (W&B header, then LevelDB log blocks of 32 KiB)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
        elif kind == 0:
            break
    return out


def _finished_records(run_dir, wait_s=30.0):
    """Records of the run once its 'exit' record is on disk: wandb's writer process (wandb-core) closes the file a
    few milliseconds after ``run.finish()`` returns."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        recs = _wandb_records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def test_wandb_offline_run_holds_losses_and_lr(sample_bci, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    args = train_args(sample_bci, tmp_path / "ck", extra=("--use_wandb", "--wandb_mode", "offline"))
    assert train.main(args) == 0
    exp = tmp_path / "ck" / "run"
    runs = list((exp / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = {}
    for rec in _finished_records(runs[0]):
        if rec.WhichOneof("record_type") == "history":
            items = {(it.key or "/".join(it.nested_key)): it.value_json for it in rec.history.item}
            step = int(json.loads(items.get("_step", "0")))
            history.setdefault(step, {}).update({k: json.loads(v) for k, v in items.items()})
    assert sorted(history) == [2, 4, 6]
    for (step, name), v in _loss_log(exp / "loss_log.txt").items():
        assert history[step][f"loss/{name}"] == pytest.approx(v, abs=5e-4)
    assert history[6]["lr"] == pytest.approx(0.0)  # 1 epoch, no decay epochs: lr 0 after the last
    assert history[2]["images/fake_B/width"] == 64 and history[2]["images/fake_B/_type"] == "image-file"


def test_evaluate_logs_metrics_to_tensorboard(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import evaluate
    from tests.test_evaluate import _make_run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    _make_run(tmp_path / "exp", n=5, identical=())
    assert evaluate.main(["--result_path", str(tmp_path / "exp"), "--no_progress", "--num_workers", "1",
                          "--no_report", "--tensorboard_dir", str(tmp_path / "tb")]) == 0
    js = json.loads((tmp_path / "exp" / "test_latest" / "metrics.json").read_text())
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Scalars("eval/psnr")[0].value == pytest.approx(js["psnr"], rel=1e-6)
    assert acc.Scalars("eval/ssim")[0].value == pytest.approx(js["ssim"], rel=1e-6)
    assert acc.Scalars("eval/her2_0/psnr")[0].step == 0


def test_missing_packages_are_clear_errors(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from util import trackers

    opt = SimpleNamespace(checkpoints_dir=str(tmp_path), name="x", use_tensorboard=False, use_wandb=True)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(OptionError, match="pip install wandb"):
        trackers.from_options(opt)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    opt.use_wandb, opt.use_tensorboard = False, True
    with pytest.raises(OptionError, match="pip install tensorboard"):
        trackers.from_options(opt)


def test_wandb_auto_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    from util.trackers import resolve_wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    with pytest.raises(OptionError):
        resolve_wandb_mode("cloud")
