"""Registry, DataLoader factory (seeded repeatability), unaligned sampling and the single dataset."""
import argparse
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, SequentialSampler

import data
from data.aligned_dataset import AlignedDataset
from data.single_dataset import SingleDataset
from data.unaligned_dataset import UnalignedDataset
from util.errors import DataError, OptionError


def make_opt(root, **kw):
    base = dict(dataroot=str(root), phase="train", direction="AtoB", input_nc=3, output_nc=3, preprocess="crop",
                load_size=16, crop_size=8, no_flip=False, serial_batches=False, batch_size=2, num_threads=0,
                max_dataset_size=sys.maxsize, isTrain=True, seed=None, dataset_mode="aligned", A_dir="HE",
                B_dir="IHC", gpu_ids=[])
    base.update(kw)
    return argparse.Namespace(**base)


def save(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def rand_rgb(seed, h=12, w=14):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def bci(tmp_path):
    for i in range(6):
        n = f"{i:05d}_train_{['0', '1+', '2+', '3+'][i % 4]}.png"
        save(rand_rgb(i), tmp_path / "HE" / "train" / n)
        save(rand_rgb(100 + i), tmp_path / "IHC" / "train" / n)
    return tmp_path


# ---------------------------------------------------------------- registry
def test_registry_names_and_option_setters():
    assert set(data.DATASET_MODES) == {"aligned", "single", "unaligned"}
    assert data.get_dataset_class("aligned") is AlignedDataset
    assert data.get_dataset_class("single") is SingleDataset
    assert data.get_dataset_class("unaligned") is UnalignedDataset
    import argparse as ap
    parser = ap.ArgumentParser()
    assert data.get_option_setter("aligned")(parser, True) is parser
    with pytest.raises(OptionError) as e:
        data.get_option_setter("template")
    assert "'template'" in str(e.value) and all(n in str(e.value) for n in ("aligned", "single", "unaligned"))


# ---------------------------------------------------------------- DataLoader
def batches(loader):
    return [(b["A"].clone(), b["B"].clone(), list(b["A_paths"]), list(b["her2"])) for b in loader]


def same(x, y):
    return len(x) == len(y) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
                                    for a, b in zip(x, y))


def test_dataloader_defaults(bci):
    opt = make_opt(bci, serial_batches=True)
    ds = data.create_dataset(opt)
    loader = data.create_dataloader(opt, ds)
    assert loader.batch_size == 2 and loader.num_workers == 0 and not loader.pin_memory
    assert isinstance(loader.sampler, SequentialSampler)
    b = next(iter(loader))
    assert b["A"].shape == (2, 3, 8, 8) and b["her2"] == ["0", "1+"]
    assert b["A_paths"][0].endswith("00000_train_0.png")
    assert isinstance(data.create_dataloader(make_opt(bci), ds).sampler, torch.utils.data.RandomSampler)
    assert isinstance(data.create_dataloader(opt, ds, shuffle=True).sampler, torch.utils.data.RandomSampler)
    sampler = SequentialSampler(ds)
    assert data.create_dataloader(make_opt(bci), ds, sampler=sampler).sampler is sampler
    with pytest.raises(OptionError, match="sampler"):
        data.create_dataloader(opt, ds, shuffle=True, sampler=sampler)
    assert len(data.create_dataloader(opt, ds, drop_last=True)) == 3


def test_seeded_loader_repeats_with_workers(bci):
    opt = make_opt(bci, seed=7, num_threads=2)
    ds = data.create_dataset(opt)
    first = batches(data.create_dataloader(opt, ds))
    torch.manual_seed(12345)  # the global seed must not matter when workers are used
    second = batches(data.create_dataloader(opt, ds))
    assert same(first, second)
    other = batches(data.create_dataloader(make_opt(bci, seed=8, num_threads=2), ds))
    assert not same(first, other)


def test_seeded_loader_repeats_in_main_process(bci):
    opt = make_opt(bci, seed=3, num_threads=0)
    ds = data.create_dataset(opt)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)  # crops/flips in the main process use the global generator (documented)
        runs.append(batches(data.create_dataloader(opt, ds)))
    assert same(*runs)
    assert [p for b in runs[0] for p in b[2]] != sorted(p for b in runs[0] for p in b[2])  # shuffled


class NumpyDraws(Dataset):
    """Returns numpy and Python random draws made inside the worker."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import random
        return torch.tensor([np.random.rand(), random.random()])


def test_workers_seed_numpy_and_random():
    opt = argparse.Namespace(batch_size=4, serial_batches=True, num_threads=2, seed=5, gpu_ids=[])
    a = torch.cat(list(data.create_dataloader(opt, NumpyDraws())))
    b = torch.cat(list(data.create_dataloader(opt, NumpyDraws())))
    torch.testing.assert_close(a, b)
    opt.seed = 6
    c = torch.cat(list(data.create_dataloader(opt, NumpyDraws())))
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- unaligned
@pytest.fixture()
def unpaired(tmp_path):
    for i in range(3):
        save(rand_rgb(i), tmp_path / "trainA" / f"a{i}.png")
    for i in range(5):
        save(rand_rgb(50 + i, 10, 18), tmp_path / "trainB" / f"b{i}.jpg")
    return tmp_path


def test_unaligned_length_and_serial_batches(unpaired):
    ds = data.create_dataset(make_opt(unpaired, dataset_mode="unaligned", serial_batches=True))
    assert len(ds) == 5
    items = [ds[i] for i in range(5)]
    assert [it["A_paths"].rsplit("/", 1)[1] for it in items] == ["a0.png", "a1.png", "a2.png", "a0.png", "a1.png"]
    assert [it["B_paths"].rsplit("/", 1)[1] for it in items] == [f"b{i}.jpg" for i in range(5)]
    assert items[0]["A"].shape == (3, 8, 8) and items[0]["B"].shape == (3, 8, 8)


def test_unaligned_random_b_is_independent_of_index(unpaired):
    ds = data.create_dataset(make_opt(unpaired, dataset_mode="unaligned"))
    torch.manual_seed(0)
    counts = Counter(ds[0]["B_paths"].rsplit("/", 1)[1] for _ in range(200))
    assert set(counts) == {f"b{i}.jpg" for i in range(5)}
    assert max(counts.values()) < 70  # roughly uniform (expected 40 each)
    torch.manual_seed(0)
    picks_i0 = [ds.b_index(0) for _ in range(50)]
    torch.manual_seed(0)
    picks_i3 = [ds.b_index(3) for _ in range(50)]
    assert picks_i0 == picks_i3  # the draw does not depend on the item index


def test_unaligned_direction_and_combined_halves(tmp_path):
    a, b = rand_rgb(1, 8, 8), rand_rgb(2, 8, 8)
    save(np.concatenate([a, b], axis=1), tmp_path / "train" / "ab.png")
    opt = make_opt(tmp_path, dataset_mode="unaligned", preprocess="none", isTrain=False, serial_batches=True)
    item = data.create_dataset(opt)[0]
    np.testing.assert_array_equal(np.round((item["A"].permute(1, 2, 0).numpy() + 1) * 127.5), a)
    np.testing.assert_array_equal(np.round((item["B"].permute(1, 2, 0).numpy() + 1) * 127.5), b)
    opt.direction = "BtoA"
    item = data.create_dataset(opt)[0]
    np.testing.assert_array_equal(np.round((item["A"].permute(1, 2, 0).numpy() + 1) * 127.5), b)


def test_unaligned_folders_swap(unpaired):
    ds = data.create_dataset(make_opt(unpaired, dataset_mode="unaligned", direction="BtoA", serial_batches=True))
    assert len(ds.A) == 5 and len(ds.B) == 3 and ds[0]["A_paths"].endswith("trainB/b0.jpg")


# ---------------------------------------------------------------- single
def test_single_reads_dataroot_directly(tmp_path):
    folder = tmp_path / "HE" / "test"
    for n in ("00003_test_3+.png", "00001_test_1+.png"):
        save(rand_rgb(3, 12, 16), folder / n)
    ds = data.create_dataset(make_opt(folder, dataset_mode="single", isTrain=False, input_nc=1, preprocess="none"))
    item = ds[0]
    assert set(item) == {"A", "A_paths", "her2"}
    assert item["A_paths"].endswith("00001_test_1+.png") and item["her2"] == "1+"
    assert item["A"].shape == (1, 12, 16)
    # the BCI root with --phase: the input folder of the paired layout (B's folder with BtoA)
    save(rand_rgb(4, 12, 16), tmp_path / "IHC" / "test" / "00001_test_1+.png")
    ds = data.create_dataset(make_opt(tmp_path, dataset_mode="single", phase="test", isTrain=False))
    assert ds.folder == folder and len(ds) == 2
    ds = data.create_dataset(make_opt(tmp_path, dataset_mode="single", phase="test", direction="BtoA"))
    assert ds.folder == tmp_path / "IHC" / "test" and len(ds) == 1
    with pytest.raises(DataError) as e:
        data.create_dataset(make_opt(tmp_path, dataset_mode="single", phase="val"))
    msg = str(e.value)
    assert "HE/" in msg and "directly inside --dataroot" in msg and str(tmp_path / "HE" / "val") in msg
    save(rand_rgb(4, 12, 16), tmp_path / "testA" / "x.png")
    with pytest.raises(DataError, match="several input folders"):
        data.create_dataset(make_opt(tmp_path, dataset_mode="single", phase="test"))


# ---------------------------------------------------------------- with the real option parser
def test_with_parsed_options(bci):
    options = pytest.importorskip("options")
    opt = options.parse(["--dataroot", str(bci), "--preprocess", "crop", "--crop_size", "8", "--num_threads", "0",
                         "--batch_size", "3", "--seed", "0"])
    loader = data.create_dataloader(opt, data.create_dataset(opt))
    b = next(iter(loader))
    assert b["A"].shape == (3, 3, 8, 8) and b["B"].shape == (3, 3, 8, 8) and len(b["her2"]) == 3
    test_opt = options.parse(["--dataroot", str(bci), "--phase", "train", "--dataset_mode", "single",
                              "--preprocess", "none"], is_train=False)
    item = data.create_dataset(test_opt)[0]
    assert item["A"].shape == (3, 12, 14) and item["A_paths"].endswith("HE/train/00000_train_0.png")


# ---------------------------------------------------------------- errors from DataLoader workers
def test_worker_data_error_reaches_main_process_as_one_line(bci):
    """A corrupt file decoded in a worker process: the main process gets a DataError whose message is the worker's
    original one line (naming the file), not PyTorch's multi-line "Caught DataError in DataLoader worker" text."""
    bad = bci / "IHC" / "train" / "00001_train_1+.png"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])  # truncated PNG: the header reads, the pixels do not
    ds = AlignedDataset(make_opt(bci))
    loader = data.create_dataloader(make_opt(bci, num_threads=1, serial_batches=True, batch_size=1), ds)
    it = iter(loader)
    with pytest.raises(DataError) as e:
        for _ in it:
            pass
    it._shutdown_workers()  # stop the persistent worker now, not at a later garbage collection
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and msg.startswith("cannot decode image")
    assert msg.endswith("(in DataLoader worker 0)")
    assert "Traceback" in e.value.worker_traceback and str(bad) in e.value.worker_traceback


def test_user_error_message_kept_for_ordinary_text():
    from util.errors import CheckpointError, UserError

    text = "Caught DataError somewhere else\nline 2"
    assert str(DataError(text)) == text and DataError(text).worker_traceback == ""
    assert str(UserError("a", "b")) == "('a', 'b')"
    assert isinstance(CheckpointError("x"), OSError) and str(CheckpointError("x")) == "x"


def test_batch_of_mixed_sizes_names_the_files(tmp_path):
    """--preprocess none with --batch_size 2 on images of two sizes: a DataError naming both files and sizes and the
    options to change, instead of torch.stack's bare RuntimeError."""
    for n, (h, w) in (("a.png", (8, 8)), ("b.png", (8, 12))):
        save(rand_rgb(1, h, w), tmp_path / "HE" / "train" / n)
        save(rand_rgb(2, h, w), tmp_path / "IHC" / "train" / n)
    opt = make_opt(tmp_path, preprocess="none", serial_batches=True, batch_size=2)
    ds = AlignedDataset(opt)
    # before any batch is loaded (from the headers), not an hour into training when two sizes meet in a batch
    with pytest.raises(DataError, match=r"2 different sizes.*a\.png' -> 8x8 px.*b\.png' -> 8x12 px.*--batch_size 1"):
        data.create_dataloader(opt, ds)
    assert ds.sizes == [(8, 8), (12, 8)]
    data.create_dataloader(make_opt(tmp_path, preprocess="none", batch_size=1), ds)  # one image per batch is fine
    # scale_width to 16 px wide: 8x8 -> 16x16, 8x12 -> 10x16 (height int(16 * 8 / 12) = 10): still two sizes
    with pytest.raises(DataError, match="scale_width"):
        data.create_dataloader(make_opt(tmp_path, preprocess="scale_width", load_size=16, crop_size=8, batch_size=2),
                               ds)
    # the collate function checks too (datasets without 'sizes', e.g. unaligned)
    with pytest.raises(DataError, match=r"different sizes.*a\.png' \(8, 8\).*b\.png' \(8, 12\).*--batch_size 1"):
        data.collate_checked([ds[0], ds[1]])
    # same sizes batch as default_collate does
    opt = make_opt(tmp_path, preprocess="crop", crop_size=8, batch_size=2, serial_batches=True)
    batch = next(iter(data.create_dataloader(opt, AlignedDataset(opt))))
    assert batch["A"].shape == (2, 3, 8, 8) and batch["A_paths"] == [str(tmp_path / "HE" / "train" / "a.png"),
                                                                     str(tmp_path / "HE" / "train" / "b.png")]
