"""Tests of nni_splitting.common.data: digits, CIFAR-10 (both layouts), MNIST IDX files, loaders."""

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nni_splitting.common.data import (
    CIFAR10_MEAN, CIFAR10_STD, DATASETS, DatasetSplits, dummy_input, load_dataset, make_loaders,
    read_idx,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def _rows(x: torch.Tensor) -> set:
    return {row.tobytes() for row in x.reshape(len(x), -1).numpy()}


def _check_types(splits: DatasetSplits):
    for ds in (splits.train, splits.val, splits.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == splits.input_shape
    assert splits.in_channels == splits.input_shape[0]


# ---------------------------------------------------------------- digits


def test_digits_splits_disjoint_sized_stratified():
    splits = load_dataset("digits")
    _check_types(splits)
    assert splits.num_classes == 10 and splits.input_shape == (1, 8, 8)
    n_train, n_val, n_test = len(splits.train), len(splits.val), len(splits.test)
    assert n_train + n_val + n_test == 1797
    assert abs(n_test - 0.3 * 1797) <= 10
    assert abs(n_val - 0.1 * (1797 - n_test)) <= 10
    train, val, test = (_rows(ds.tensors[0]) for ds in splits[:3])
    assert len(train) == n_train and len(val) == n_val and len(test) == n_test
    assert not (train & val) and not (train & test) and not (val & test)

    from sklearn.datasets import load_digits
    totals = np.bincount(load_digits().target, minlength=10)
    for ds, frac in ((splits.test, 0.3), (splits.val, 0.07), (splits.train, 0.63)):
        counts = np.bincount(ds.tensors[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - frac * totals) <= 2), (frac, counts)

    x = splits.train.tensors[0]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_digits_test_part_fixed_and_seed_changes_val():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)
    again = load_dataset("digits", seed=0)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert _rows(a.val.tensors[0]) != _rows(b.val.tensors[0])
    assert torch.equal(a.val.tensors[0], again.val.tensors[0])
    assert torch.equal(a.train.tensors[1], again.train.tensors[1])


def test_digits_per_class_and_zero_val():
    splits = load_dataset("digits", per_class=5, val_fraction=0.0)
    assert len(splits.val) == 0 and splits.val.tensors[0].shape[1:] == (1, 8, 8)
    assert np.bincount(splits.train.tensors[1].numpy()).tolist() == [5] * 10
    assert len(splits.test) == len(load_dataset("digits").test)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="1.5"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(ValueError, match="per_class.*0"):
        load_dataset("digits", per_class=0)
    with pytest.raises(ValueError, match="test_per_class.*-2"):
        load_dataset("digits", test_per_class=-2)
    assert set(DATASETS) == {"digits", "cifar10", "mnist", "fashion_mnist"}


def test_loaders_and_dummy_input():
    splits = load_dataset("digits")
    train, val, test = make_loaders(splits, batch_size=32, seed=3)
    first = next(iter(train))[1]
    assert torch.equal(first, next(iter(make_loaders(splits, batch_size=32, seed=3)[0]))[1])
    assert not torch.equal(first, next(iter(make_loaders(splits, batch_size=32, seed=4)[0]))[1])
    assert sum(len(y) for _, y in val) == len(splits.val)
    assert torch.equal(next(iter(test))[1], splits.test.tensors[1][:32])  # not shuffled
    x = dummy_input(splits)
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    assert dummy_input(splits, batch_size=3).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders(splits, batch_size=0)


# ---------------------------------------------------------------- CIFAR-10


@pytest.fixture(scope="module")
def cifar_imagefolder(tmp_path_factory):
    script = _shared("cifar10", "export_imagefolder.py")
    dest = tmp_path_factory.mktemp("cifar_if") / "cifar10"
    subprocess.run([sys.executable, str(script), str(dest), "--per-class", "20"], check=True,
                   capture_output=True)
    return dest


def test_cifar_imagefolder_real_export(cifar_imagefolder):
    splits = load_dataset("cifar10", cifar_imagefolder)
    _check_types(splits)
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 200)
    assert np.bincount(splits.train.tensors[1].numpy()).tolist() == [18] * 10
    assert np.bincount(splits.test.tensors[1].numpy()).tolist() == [20] * 10
    assert not (_rows(splits.train.tensors[0]) & _rows(splits.val.tensors[0]))

    # Labels follow the sorted class folders and pixels are normalised with the CIFAR stats.
    from PIL import Image
    classes = sorted(p.name for p in (cifar_imagefolder / "test").iterdir())
    assert classes[0] == "airplane" and classes[-1] == "truck"
    first = sorted((cifar_imagefolder / "test" / classes[3]).iterdir())[0]
    raw = np.asarray(Image.open(first).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    mean, std = np.array(CIFAR10_MEAN)[:, None, None], np.array(CIFAR10_STD)[:, None, None]
    index = int(np.flatnonzero(splits.test.tensors[1].numpy() == 3)[0])
    assert np.allclose(splits.test.tensors[0][index].numpy(), (raw - mean) / std, atol=1e-5)


def test_cifar_imagefolder_limits(cifar_imagefolder):
    splits = load_dataset("cifar10", str(cifar_imagefolder), per_class=5, test_per_class=3,
                          val_per_class=1, seed=7)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 30)


def _write_fake_cifar_pickles(folder: Path, n_per_batch=20, n_test=10):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = (rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                                      [(i + k) % 10 for k in range(n_per_batch)])
    batches["test_batch"] = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                             [k % 10 for k in range(n_test)])
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * len(labels)}, f)
    return batches


def test_cifar_pickle_layout(tmp_path):
    batches = _write_fake_cifar_pickles(tmp_path / "cifar-10-batches-py")
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):
        splits = load_dataset("cifar10", data_dir, val_fraction=0.1)
        _check_types(splits)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 10)
    test_x, test_y = batches["test_batch"]
    assert splits.test.tensors[1].tolist() == test_y
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    pixels = (splits.test.tensors[0] * std + mean) * 255
    assert torch.allclose(pixels, torch.from_numpy(test_x.reshape(-1, 3, 32, 32)).float(), atol=1e-3)
    all_train_y = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    got = np.bincount(np.concatenate([splits.train.tensors[1], splits.val.tensors[1]]), minlength=10)
    assert got.tolist() == np.bincount(all_train_y, minlength=10).tolist()


class _RunsCode:
    """Unpickling this calls os.system: what a plain pickle.load of a foreign file would do."""

    def __reduce__(self):
        import os
        return (os.system, ("touch " + str(_RunsCode.marker),))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    _write_fake_cifar_pickles(tmp_path / "cifar-10-batches-py")
    _RunsCode.marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _RunsCode(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="data_batch_3.*not allowed"):
        load_dataset("cifar10", tmp_path)
    assert not _RunsCode.marker.exists()
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        f.write(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="data_batch_3.*not a CIFAR-10 pickle batch"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("data_dir", [None, "empty"])
def test_cifar_missing_message(tmp_path, data_dir):
    path = None if data_dir is None else tmp_path
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", path)
    msg = str(err.value)
    for needle in ("cifar-10-batches-py", "data_batch_1", "test_batch", "train/<class>",
                   "test/<class>", "not used"):
        assert needle in msg
    if path is not None:
        assert str(tmp_path) in msg


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def test_mnist_real_files():
    root = _shared("mnist")
    splits = load_dataset("mnist", root, val_fraction=0.0)
    _check_types(splits)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert len(splits.train) == 60000 and len(splits.test) == 10000 and len(splits.val) == 0
    for ds in (splits.train, splits.test):
        y = ds.tensors[1]
        assert y.min().item() == 0 and y.max().item() == 9
    assert np.bincount(splits.test.tensors[1].numpy()).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = splits.train.tensors[0]
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


def test_mnist_folder_variants_and_limits():
    root = _shared("mnist")
    for data_dir in (root / "MNIST", root / "MNIST" / "raw"):
        splits = load_dataset("mnist", data_dir, per_class=10, test_per_class=5)
        assert (len(splits.train), len(splits.test)) == (100, 50)
        assert len(splits.val) == 6000


def test_fashion_mnist_real_files():
    splits = load_dataset("fashion_mnist", _shared("fashion_mnist"), per_class=20, val_per_class=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (200, 20, 10000)
    assert np.bincount(splits.test.tensors[1].numpy()).tolist() == [1000] * 10


def _write_idx(path: Path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def test_idx_unzipped_files_in_raw_dir(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (40, 28, 28)), np.arange(40) % 10
    x_te, y_te = rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10
    for stem, arr in (("train-images-idx3-ubyte", x_tr), ("train-labels-idx1-ubyte", y_tr),
                      ("t10k-images-idx3-ubyte", x_te), ("t10k-labels-idx1-ubyte", y_te)):
        _write_idx(raw / stem, arr, compress=False)
    assert np.array_equal(read_idx(raw / "t10k-images-idx3-ubyte"), x_te)
    for data_dir in (tmp_path, raw):
        splits = load_dataset("fashion_mnist", data_dir, val_fraction=0.25)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 20)
    pixels = splits.test.tensors[0][:, 0] * 0.3530 + 0.2860
    assert torch.allclose(pixels * 255, torch.from_numpy(x_te).float(), atol=1e-3)


def test_idx_rejects_bad_file(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="needs 10 bytes"):
        read_idx(short)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_missing_message(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, tmp_path)
    msg = str(err.value)
    assert f"{folder}/raw" in msg and "train-images-idx3-ubyte" in msg
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg
    with pytest.raises(FileNotFoundError, match="data_dir=None"):
        load_dataset(name)
