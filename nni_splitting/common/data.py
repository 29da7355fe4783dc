"""Offline data sets as in-memory ``TensorDataset`` splits.

Nothing is downloaded: scikit-learn's 8x8 ``digits`` ship with scikit-learn,
and CIFAR-10, MNIST and Fashion-MNIST are read from a local ``data_dir``.
:func:`load_dataset` returns a :class:`DatasetSplits` of normalised float32
inputs and int64 labels.  The validation split is always carved from the
training data (class-stratified, seeded), never from the test data. The
readers of the file formats are in :mod:`nni_splitting.common.data_files`.

Accepted layouts:

* ``"cifar10"``: torchvision's pickle batches (``data_dir`` is the
  ``cifar-10-batches-py`` folder or its parent), or an ImageFolder tree
  ``data_dir/{train,test}/<class>/*.jpg|png`` (classes sorted by name).
* ``"mnist"`` / ``"fashion_mnist"``: torchvision's raw IDX files
  (``.gz`` or not) in ``data_dir/MNIST/raw`` (``FashionMNIST/raw``),
  ``data_dir/raw`` or ``data_dir`` itself.
* the user's own data: an importable factory ``"package.module:function"``
  called with ``dataset_args`` that returns ``(train, val, test)`` datasets of
  ``(input tensor, int label)`` pairs (:func:`splits_from_factory`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from nni_splitting.common.data_files import (MNIST_FILES, find_cifar_pickles, find_idx_files, image_fetcher, image_folder_files,
                         read_cifar_pickle, read_idx)
from nni_splitting.common.importing import import_callable, is_import_path

__all__ = [
    "DATASETS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DatasetSplits",
    "load_dataset",
    "splits_from_factory",
    "input_shape_of",
    "make_loaders",
    "dummy_input",
    "read_idx",
]

logger = logging.getLogger(__name__)

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist")

#: Per-channel CIFAR-10 train mean and std (of the original, pixel-exact images).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_MNIST_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
_MNIST_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
#: Fraction of the digits set held out as test data, and its fixed split seed.
_DIGITS_TEST_FRACTION = 0.3
_DIGITS_TEST_SEED = 0


class DatasetSplits(NamedTuple):
    """Train / validation / test splits of one data set.

    Attributes
    ----------
    train, val, test : torch.utils.data.TensorDataset
        ``(inputs float32 [N, C, H, W], labels int64 [N])``.
    num_classes : int
        Number of classes.
    in_channels : int
        Input channels ``C``.
    input_shape : tuple of int
        Shape of one input, ``(C, H, W)``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    input_shape: tuple


class _Source(NamedTuple):
    """Labels of a pool of examples and a function decoding a subset of them."""

    labels: np.ndarray  # int64 [N]
    fetch: Callable[[np.ndarray], np.ndarray]  # indices -> array [n, C, H, W]


def _array_source(x: np.ndarray, y: np.ndarray) -> _Source:
    return _Source(np.asarray(y, dtype=np.int64), lambda idx: x[idx])


# ---------------------------------------------------------------------------
# Splitting helpers


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator):
    """Split indices per class: ``round(fraction * n_c)`` of each class go to the second part."""
    keep, take = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_take = int(math.floor(fraction * len(idx) + 0.5))
        take.append(idx[:n_take])
        keep.append(idx[n_take:])
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate(keep)) if keep else empty,
            np.sort(np.concatenate(take)) if take else empty)


def _limit_per_class(indices: np.ndarray, labels: np.ndarray, n: int, rng=None) -> np.ndarray:
    """Keep at most ``n`` indices per class: a seeded random choice, or the first ``n`` if ``rng`` is None."""
    out = []
    for c in np.unique(labels[indices]):
        idx = indices[labels[indices] == c]
        if rng is not None:
            idx = idx[rng.permutation(len(idx))]
        out.append(idx[:n])
    return np.sort(np.concatenate(out)) if out else indices[:0]


def _check_count(value, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive int or None, got {value!r}")
    return int(value)


def _make_splits(train_src: _Source, test_src: _Source, num_classes: int,
                 normalize: Callable[[np.ndarray], np.ndarray], val_fraction: float,
                 per_class, val_per_class, test_per_class, seed: int) -> DatasetSplits:
    """Carve the validation split, apply the per-class limits, decode and normalise."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _stratified_split(train_src.labels, val_fraction, rng)
    if per_class is not None:
        train_idx = _limit_per_class(train_idx, train_src.labels, per_class, rng)
    if val_per_class is not None:
        val_idx = _limit_per_class(val_idx, train_src.labels, val_per_class, rng)
    test_idx = np.arange(len(test_src.labels))
    if test_per_class is not None:
        test_idx = _limit_per_class(test_idx, test_src.labels, test_per_class)

    # Decode train and val together (one pass over the training pool).
    both = np.concatenate([train_idx, val_idx])
    x_both = normalize(train_src.fetch(both))
    x_test = normalize(test_src.fetch(test_idx))

    def dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                             torch.from_numpy(np.asarray(y, dtype=np.int64)))

    n_train = len(train_idx)
    train = dataset(x_both[:n_train], train_src.labels[train_idx])
    val = dataset(x_both[n_train:], train_src.labels[val_idx])
    test = dataset(x_test, test_src.labels[test_idx])
    shape = tuple(int(s) for s in x_both.shape[1:]) if len(both) else tuple(int(s) for s in x_test.shape[1:])
    logger.info("splits: train %d, val %d, test %d, input shape %s",
                len(train), len(val), len(test), shape)
    return DatasetSplits(train, val, test, int(num_classes), int(shape[0]), shape)


# ---------------------------------------------------------------------------
# digits


def _load_digits(**split_args) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    # The test part is fixed, independent of ``seed``.
    pool_idx, test_idx = _stratified_split(y, _DIGITS_TEST_FRACTION,
                                           np.random.default_rng(_DIGITS_TEST_SEED))
    train_src = _array_source(x[pool_idx], y[pool_idx])
    test_src = _array_source(x[test_idx], y[test_idx])
    # Standardise with the statistics of the whole training pool (train + val).
    mean, std = float(x[pool_idx].mean()), float(x[pool_idx].std())
    return _make_splits(train_src, test_src, 10, lambda a: (a - mean) / std, **split_args)


# ---------------------------------------------------------------------------
# CIFAR-10

_CIFAR_HELP = (
    "CIFAR-10 not found in {where}. Put it there in one of two layouts:\n"
    "  1. torchvision's pickle batches: DATA_DIR/cifar-10-batches-py/data_batch_1 ... data_batch_5 "
    "and DATA_DIR/cifar-10-batches-py/test_batch (DATA_DIR may also be the cifar-10-batches-py "
    "folder itself), e.g. /data/cifar-10-batches-py/data_batch_1;\n"
    "  2. an ImageFolder tree: DATA_DIR/train/<class>/*.jpg|png and DATA_DIR/test/<class>/*.jpg|png, "
    "e.g. /data/cifar10/train/airplane/00029.jpg and /data/cifar10/test/truck/00012.png "
    "(classes sorted by name give the label indices).\n"
    "Pass that folder as data_dir. Nothing is downloaded (torchvision downloads are not used)."
)


def _load_cifar10(data_dir, **split_args) -> DatasetSplits:
    if data_dir is None:
        raise FileNotFoundError(_CIFAR_HELP.format(where="data_dir=None"))
    root = Path(data_dir).expanduser()
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)

    def normalize(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0 - mean) / std

    pickles = find_cifar_pickles(root)
    if pickles is not None:
        logger.info("reading CIFAR-10 pickle batches from %s", pickles[0].parent)
        parts = [read_cifar_pickle(p) for p in pickles[:5]]
        x_tr = np.concatenate([p[0] for p in parts])
        y_tr = np.concatenate([p[1] for p in parts])
        x_te, y_te = read_cifar_pickle(pickles[5])
        return _make_splits(_array_source(x_tr, y_tr), _array_source(x_te, y_te), 10,
                            normalize, **split_args)

    if (root / "train").is_dir() and (root / "test").is_dir():
        cls_tr, paths_tr, y_tr = image_folder_files(root / "train")
        cls_te, paths_te, y_te = image_folder_files(root / "test")
        if cls_tr != cls_te:
            raise ValueError(f"train classes {cls_tr!r} differ from test classes {cls_te!r} in {str(root)!r}")
        if len(paths_tr) and len(paths_te):
            logger.info("reading CIFAR-10 ImageFolder tree from %s (%d classes)", root, len(cls_tr))
            return _make_splits(_Source(y_tr, image_fetcher(paths_tr)),
                                _Source(y_te, image_fetcher(paths_te)), len(cls_tr),
                                normalize, **split_args)
    raise FileNotFoundError(_CIFAR_HELP.format(where=repr(str(root))))


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST

def _load_mnist(name: str, data_dir, **split_args) -> DatasetSplits:
    folder = _MNIST_FOLDER[name]
    expected = ", ".join(f"{s}.gz" for s in MNIST_FILES.values())
    help_text = (
        f"{name} not found in {{where}}. Put the four IDX files ({expected}; unzipped names also work) "
        f"in DATA_DIR/{folder}/raw/ (torchvision's raw layout), "
        f"e.g. /data/{folder}/raw/{MNIST_FILES['train_images']}.gz, "
        f"and pass data_dir=/data (or the {folder} folder, or its raw/ folder). "
        "Nothing is downloaded (torchvision downloads are not used)."
    )
    if data_dir is None:
        raise FileNotFoundError(help_text.format(where="data_dir=None"))
    root = Path(data_dir).expanduser()
    files = find_idx_files(root, folder)
    if files is None:
        raise FileNotFoundError(help_text.format(where=repr(str(root))))
    logger.info("reading %s IDX files from %s", name, files["train_images"].parent)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{name} {split}: bad shapes images {x.shape} labels {y.shape}")
    mean, std = _MNIST_STATS[name]

    def normalize(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0 - mean) / std

    return _make_splits(_array_source(arrays["train_images"][:, None], arrays["train_labels"]),
                        _array_source(arrays["test_images"][:, None], arrays["test_labels"]),
                        10, normalize, **split_args)


# ---------------------------------------------------------------------------
# Public API


#: Input shape ``(C, H, W)`` of one example of each built-in data set (known without reading it).
INPUT_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}


def input_shape_of(name: str, dataset_args=None) -> tuple:
    """The input shape of data set ``name``: known for the built-in ones, the user's factory is called."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key in INPUT_SHAPES:
        return INPUT_SHAPES[key]
    return tuple(splits_from_factory(name, dataset_args).input_shape)


def splits_from_factory(path: str, dataset_args=None) -> DatasetSplits:
    """The user's data: ``path`` names a factory returning ``(train, val, test)`` torch datasets whose items
    are ``(input tensor, label)``; the classes are counted from the labels of all three splits.

    Raises ``ValueError`` saying what the factory returned when it is not that.
    """
    factory = import_callable(path, "dataset")
    try:
        parts = factory(**dict(dataset_args or {}))
    except Exception as error:
        raise ValueError(f"dataset {path!r} failed with dataset_args {dict(dataset_args or {})}: "
                         f"{type(error).__name__}: {error}") from error
    if isinstance(parts, DatasetSplits):
        return parts
    if not isinstance(parts, (tuple, list)) or len(parts) != 3:
        raise ValueError(f"dataset {path!r} must return (train, val, test) datasets, got {type(parts).__name__}")
    labels = []
    for split, part in zip(("train", "val", "test"), parts):
        try:
            size = len(part)
            first = part[0]
        except Exception as error:
            raise ValueError(f"dataset {path!r}: its {split} split is not a sized dataset of (input, label) pairs "
                             f"({type(error).__name__}: {error})") from error
        if size == 0 or not isinstance(first, (tuple, list)) or len(first) != 2 or not isinstance(first[0], torch.Tensor):
            raise ValueError(f"dataset {path!r}: its {split} split must hold (input tensor, label) pairs, "
                             f"got {type(first).__name__} items ({size} of them)")
        labels.append(part.tensors[1] if isinstance(part, TensorDataset) else
                      torch.as_tensor([int(part[i][1]) for i in range(size)]))
    shape = tuple(parts[0][0][0].shape)
    num_classes = int(max(int(split_labels.max()) for split_labels in labels)) + 1
    return DatasetSplits(parts[0], parts[1], parts[2], num_classes, shape[0] if len(shape) > 1 else 1, shape)


def load_dataset(name: str, data_dir=None, val_fraction: float = 0.1, per_class=None,
                 seed: int = 0, test_per_class=None, val_per_class=None, dataset_args=None) -> DatasetSplits:
    """Load a data set into normalised in-memory train / val / test splits.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``"digits"``, ``"cifar10"``, ``"mnist"``,
        ``"fashion_mnist"``; or an importable factory ``"package.module:function"``
        (:func:`splits_from_factory`, called with ``dataset_args``; the split
        arguments below do not apply to it).
    data_dir : str or pathlib.Path, optional
        Where the files are (see the module docstring); ignored for ``"digits"``.
    val_fraction : float, optional
        Fraction of each class of the training data that is held out for
        validation (default 0.1), in ``[0, 1)``.  For ``"digits"`` the
        training data is the 70% of the 1797 images that are not the fixed
        30% test part.
    per_class : int, optional
        Keep at most this many training images per class (a seeded random,
        class-balanced subset, taken after the validation split is carved).
    seed : int, optional
        Seed of the validation split and of the ``per_class`` subsets.
    test_per_class : int, optional
        Keep only the first this many test images of each class.
    val_per_class : int, optional
        Keep at most this many validation images per class.

    Returns
    -------
    DatasetSplits

    Raises
    ------
    ValueError
        For an unknown name or bad arguments.
    FileNotFoundError
        If the files of ``name`` are not found in ``data_dir``; the message
        says which layout is expected.
    """
    if is_import_path(name):
        return splits_from_factory(name, dataset_args)
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key == "fashionmnist":
        key = "fashion_mnist"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    split_args = dict(val_fraction=float(val_fraction),
                      per_class=_check_count(per_class, "per_class"),
                      val_per_class=_check_count(val_per_class, "val_per_class"),
                      test_per_class=_check_count(test_per_class, "test_per_class"),
                      seed=int(seed))
    if key == "digits":
        return _load_digits(**split_args)
    if key == "cifar10":
        return _load_cifar10(data_dir, **split_args)
    return _load_mnist(key, data_dir, **split_args)


def make_loaders(splits: DatasetSplits, batch_size: int = 128, seed: int = 0,
                 eval_batch_size=None, num_workers: int = 0):
    """Data loaders of the three splits; only the train loader shuffles (seeded).

    Parameters
    ----------
    splits : DatasetSplits
        As returned by :func:`load_dataset`.
    batch_size : int, optional
        Training batch size (default 128).
    seed : int, optional
        Seed of the generator that shuffles the training data.
    eval_batch_size : int, optional
        Batch size of the val / test loaders (default ``batch_size``).
    num_workers : int, optional
        Worker processes per loader (default 0: load in the main process).

    Returns
    -------
    tuple of torch.utils.data.DataLoader
        ``(train_loader, val_loader, test_loader)``.
    """
    batch_size = _check_count(batch_size, "batch_size")
    if batch_size is None:
        raise ValueError("batch_size must be a positive int, got None")
    eval_batch_size = _check_count(eval_batch_size, "eval_batch_size") or batch_size
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    train = DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=generator,
                       num_workers=num_workers)
    val = DataLoader(splits.val, batch_size=eval_batch_size, shuffle=False, num_workers=num_workers)
    test = DataLoader(splits.test, batch_size=eval_batch_size, shuffle=False, num_workers=num_workers)
    return train, val, test


def dummy_input(splits: DatasetSplits, batch_size: int = 1) -> torch.Tensor:
    """A tensor of ``batch_size`` inputs of the right shape (copies of the first training input).

    Parameters
    ----------
    splits : DatasetSplits
        As returned by :func:`load_dataset`.
    batch_size : int, optional
        Number of samples (default 1).

    Returns
    -------
    torch.Tensor
        Shape ``[batch_size, *splits.input_shape]``, float32.
    """
    batch_size = _check_count(batch_size, "batch_size") or 1
    if len(splits.train):
        x = splits.train.tensors[0][:1]
    else:
        x = torch.zeros(1, *splits.input_shape)
    return x.expand(batch_size, *splits.input_shape).clone()
