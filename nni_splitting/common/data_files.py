"""Readers of the on-disk data formats :func:`nni_splitting.common.data.load_dataset` accepts.

CIFAR-10 as torchvision's pickle batches (read by a restricted unpickler: nothing in a batch file can
run code) or as an ImageFolder tree of 32x32 images; MNIST-style IDX files, gzip-compressed or not.
Each reader raises a ``ValueError`` naming the file for anything malformed.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["MNIST_FILES", "IMAGE_SUFFIXES", "find_cifar_pickles", "CifarUnpickler", "read_cifar_pickle",
           "image_folder_files", "image_fetcher", "read_idx", "find_idx_files"]

#: File stems of the four MNIST-style IDX files (``.gz`` or not), by role.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Suffixes of the image files an ImageFolder tree may hold.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def find_cifar_pickles(root: Path):
    for d in (root, root / "cifar-10-batches-py"):
        files = [d / f"data_batch_{i}" for i in range(1, 6)] + [d / "test_batch"]
        if all(f.is_file() for f in files):
            return files
    return None


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, str, ints and numpy arrays).

    ``pickle.load`` would run whatever a file in ``data_dir`` asks for; this refuses every global
    but numpy's array reconstruction, so a foreign or malicious file is a ``ValueError``, not code.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            batch = CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as error:
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 pickle batch: {error}") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 pickle batch (a {type(batch).__name__}, not a dict)")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or ("labels" not in batch and "fine_labels" not in batch):
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 pickle batch (keys {sorted(batch)})")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"{str(path)!r}: {len(x)} images but {len(y)} labels")
    return x, y


def image_folder_files(split_dir: Path):
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (split_dir / cls).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([label] * len(files))
    return classes, paths, np.asarray(labels, dtype=np.int64)


def image_fetcher(paths: list) -> Callable[[np.ndarray], np.ndarray]:
    from PIL import Image

    def fetch(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
        for j, i in enumerate(idx):
            with Image.open(paths[i]) as img:
                arr = np.asarray(img.convert("RGB"))
            if arr.shape != (32, 32, 3):
                raise ValueError(f"image {str(paths[i])!r} has size {arr.shape[1]}x{arr.shape[0]}, "
                                 f"expected 32x32")
            out[j] = arr
        return out.transpose(0, 3, 1, 2)

    return fetch


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (as used by MNIST), gzip-compressed if its name ends in ``.gz``.

    Parameters
    ----------
    path : str or pathlib.Path
        File to read.

    Returns
    -------
    numpy.ndarray
        The array with the shape stored in the header.

    Raises
    ------
    ValueError
        If the header is malformed or the data size does not match it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (header {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{str(path)!r}: header shape {dims} needs {count * dtype.itemsize} bytes, "
                         f"file has {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims)


def find_idx_files(root: Path, folder: str):
    for d in (root / folder / "raw", root / "raw", root):
        found = {}
        for key, stem in MNIST_FILES.items():
            for name in (stem + ".gz", stem):
                if (d / name).is_file():
                    found[key] = d / name
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None
