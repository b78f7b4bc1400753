"""Datasets for the tutorials as in-memory tensors: MNIST, Fashion-MNIST, CIFAR-10 (and cats vs dogs).

This module is what the notebooks read; preparing the data once (the registry
mirrors, torchvision's download, conversion, ``prepare``/``verify`` and the
command line) lives in :mod:`helpers.data_prepare`. This one holds:

* ``load_tensors(name, split)``: the whole split as two tensors, ``x`` uint8 of
  shape (N, C, H, W) and ``y`` int64 of shape (N,), from a cache of ``.npy``
  files, in well under a second. ``normalize(x, name)`` turns a batch into
  float32 ``(x/255 - mean) / std``.
* ``torchvision_dataset(name, split, transform)``: a torchvision-style dataset
  (PIL image, label) for code written the usual way, with a DataLoader. For
  MNIST and Fashion-MNIST it *is* ``torchvision.datasets.MNIST`` /
  ``FashionMNIST`` reading the IDX files that ``prepare`` writes.
* the facts about each dataset (class names, mean/std, shapes, the sha256 of
  every cached split in ``EXPECTED``), :class:`DataError`, and the checks that
  the installer and the loaders share.

``load_tensors`` checks shapes, dtypes and the sha256 of pixels and labels
against ``EXPECTED`` once per process (hashing adds about 0.1 s for CIFAR-10's
training split), so no notebook trains on a flipped pixel or a shuffled label;
a missing or corrupted file is a DataError naming the file and the fix
(``python -m helpers.data prepare NAME``).

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

"catdog" is derived on the fly from the CIFAR-10 cache: classes 3 (cat) and
5 (dog), relabelled 0 = cat, 1 = dog, in the original order.

Command line (unchanged; it runs :func:`helpers.data_prepare.main`)::

    python -m helpers.data prepare [NAME ...]
    python -m helpers.data verify
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import artifacts

__all__ = [
    "DATASETS", "ALL_NAMES", "MEAN", "STD", "DataError", "data_dir", "class_names",
    "load_tensors", "normalize", "augment_images", "torchvision_dataset", "prepare", "verify",
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

SHAPE = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
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
IDX_PREFIX = {"train": "train", "test": "t10k"}
RAW_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


class DataError(RuntimeError):
    """A dataset is missing, incomplete or not what it should be.

    The message always says which file, what was expected, what was found and
    what to do about it.
    """


# --------------------------------------------------------------------------
# Paths and small utilities
# --------------------------------------------------------------------------

def data_dir(root=None) -> Path:
    """The data folder: ``root`` if given, else ``$LDT_DATA_DIR`` if set, else ``<repo>/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("LDT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def check_name(name: str, allowed=ALL_NAMES) -> str:
    """``name`` if it is one of ``allowed``, else a DataError listing them."""
    if name not in allowed:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(allowed)}")
    return name


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    return split


def prepare_command(name: str) -> str:
    """The shell command that prepares dataset ``name`` (the fix most errors suggest)."""
    base = "cifar10" if name == "catdog" else name
    return f"python -m helpers.data prepare {base}"


def class_names(name: str) -> list[str]:
    """The class names of dataset ``name``, indexed by label."""
    return list(_CLASS_NAMES[check_name(name)])


def array_sha256(a: np.ndarray) -> str:
    """sha256 of an array's bytes (C order), as stored in ``EXPECTED``."""
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_stale_tmp(root: Path, name: str) -> None:
    """Remove temporary files of killed writers in the folders of dataset ``name``."""
    folders = [root / name] + ([root / RAW_FOLDER[name] / "raw"] if name in RAW_FOLDER else [])
    for folder in folders:
        for tmp in artifacts.remove_stale_tmp(folder, "*.tmp"):
            print(f"removed {tmp}, left by an interrupted run")


# --------------------------------------------------------------------------
# IDX files (the MNIST format torchvision reads)
# --------------------------------------------------------------------------

def idx_paths(name: str, root: Path) -> dict:
    """The four IDX files torchvision's MNIST/FashionMNIST read, keyed by (split, kind)."""
    raw = root / RAW_FOLDER[name] / "raw"
    return {(split, kind): raw / f"{IDX_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            for split in SPLITS for kind in ("images", "labels")}


def check_idx_md5(name: str, root: Path) -> None:
    """Check the IDX files torchvision will read (memoised on size and mtime)."""
    for path in idx_paths(name, root).values():
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"{path} is missing. Fix: run {prepare_command(name)}") from None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _MD5_OK:
            continue
        found = file_digest(path, "md5")
        want = IDX_MD5[name][path.name]
        if found != want:
            raise DataError(f"{path} is corrupted: expected md5 {want}, found {found}. "
                            f"Fix: delete it and run {prepare_command(name)}")
        _MD5_OK.add(key)


_MD5_OK: set = set()


# --------------------------------------------------------------------------
# The cache of .npy files
# --------------------------------------------------------------------------

def cache_paths(name: str, split: str, root: Path):
    """The ``(x, y)`` ``.npy`` files of one cached split."""
    folder = root / name
    return folder / f"{split}_x.npy", folder / f"{split}_y.npy"


def _load_npy(path: Path, shape: tuple, dtype, name: str) -> np.ndarray:
    fix = f"Fix: delete it and run {prepare_command(name)}"
    if not path.exists():
        raise DataError(f"{path} is missing: the {PRETTY[name]} cache is not prepared. "
                        f"Fix: run {prepare_command(name)}")
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
    found = array_sha256(a)
    if found != want:
        raise DataError(f"{path} is corrupted: {name} {split} differs from the reference "
                        f"({what} sha256 {found[:12]}.. expected {want[:12]}..). "
                        f"Fix: delete it and run {prepare_command(name)}")
    _SHA_OK.add(key)


_SHA_OK: set = set()


def load_arrays(name: str, split: str, root: Path):
    """The cached arrays of one split, checked: shapes, dtypes, label range, sha256."""
    if name == "catdog":
        x, y = load_arrays("cifar10", split, root)
        keep = np.isin(y, CATDOG_CLASSES)
        return x[keep], (y[keep] == CATDOG_CLASSES[1]).astype(np.int64)
    n, want_x, want_y = EXPECTED[name][split]
    px, py = cache_paths(name, split, root)
    x = _load_npy(px, (n,) + SHAPE[name], np.uint8, name)
    y = _load_npy(py, (n,), np.int64, name)
    if y.min() < 0 or y.max() >= len(_CLASS_NAMES[name]):
        raise DataError(f"{py}: labels outside 0..{len(_CLASS_NAMES[name]) - 1}. "
                        f"Fix: delete it and run {prepare_command(name)}")
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
    check_name(name)
    _check_split(split)
    root = data_dir(root).resolve()
    key = (str(root), name, split)
    if key not in _MEMO:
        remove_stale_tmp(root, "cifar10" if name == "catdog" else name)
        x, y = load_arrays(name, split, root)
        _MEMO[key] = (torch.from_numpy(x), torch.from_numpy(y))
    return _MEMO[key]


def forget(name: str) -> None:
    """Drop the tensors of ``name`` kept by :func:`load_tensors` (``prepare`` calls this
    after rewriting a cache; forgetting "cifar10" forgets "catdog" too)."""
    names = (name, "catdog") if name == "cifar10" else (name,)
    for key in [k for k in _MEMO if k[1] in names]:
        del _MEMO[key]


def normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 images -> float32 ``(x/255 - mean) / std``, per channel.

    Works on a batch (N, C, H, W) or a single image (C, H, W), on any device,
    in one vectorised step.
    """
    x = torch.as_tensor(x)
    mean = torch.tensor(MEAN[check_name(name)], dtype=torch.float32, device=x.device)
    std = torch.tensor(STD[name], dtype=torch.float32, device=x.device)
    # (x/255 - m)/s  ==  (x - 255 m) / (255 s): one subtract, one divide
    return (x.to(torch.float32) - 255.0 * mean[:, None, None]) / (255.0 * std[:, None, None])


def augment_images(x: torch.Tensor, generator: torch.Generator | None = None, flip: bool = True,
                   crop_padding: int = 4, brightness: float = 0.2, contrast: float = 0.2,
                   saturation: float = 0.2, dataset: str | None = None) -> torch.Tensor:
    r"""The original project's CIFAR-10 augmentation, batched on tensors: flip, padded crop, colour jitter.

    ``x``: float images (N, C, H, W) in [0, 1], or, with ``dataset``, normalised with that
    dataset's statistics (:func:`normalize`; the result is then normalised too). Every
    random number comes from ``generator``, so the same generator state gives the same batch.
    Per image, in this order (torchvision's ``RandomHorizontalFlip``, ``RandomCrop(32, padding=4)``
    and ``ColorJitter(b, c, s)``, with the jitter applied in a fixed order):

    - flip: with probability 1/2, :math:`x[..., w] \to x[..., W-1-w]`;
    - crop: pad with ``crop_padding`` black pixels on every side, then take the H x W window at
      a uniform offset :math:`(d_y, d_x) \in \{0..2p\}^2` (one gather for the whole batch);
    - brightness: :math:`x \to \mathrm{clip}(b\,x)`, :math:`b \sim U[1-\beta_b, 1+\beta_b]`;
    - contrast: :math:`x \to \mathrm{clip}(c\,x + (1-c)\,\bar g)`, :math:`\bar g` the image's mean grey level;
    - saturation: :math:`x \to \mathrm{clip}(s\,x + (1-s)\,g)`, :math:`g` each pixel's grey level
      :math:`0.299R + 0.587G + 0.114B` (skipped for one-channel images);

    clip = clamp to [0, 1], so the pixels stay in range.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_images expects images (N, C, H, W), found shape {tuple(x.shape)}")
    if dataset is not None:
        mean = torch.tensor(MEAN[check_name(dataset)], dtype=x.dtype)[:, None, None]
        std = torch.tensor(STD[dataset], dtype=x.dtype)[:, None, None]
        x = x * std + mean                              # back to [0, 1]
    n, c, h, w = x.shape

    def uniform(amount: float) -> torch.Tensor:         # factors U[1-a, 1+a], shape (N, 1, 1, 1)
        return (1 - amount + 2 * amount * torch.rand(n, generator=generator, dtype=x.dtype)).view(n, 1, 1, 1)

    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    p = int(crop_padding)
    if p > 0:
        padded = torch.nn.functional.pad(x, (p, p, p, p), value=0.0)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]        # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]        # (n, 1, 1, w)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if brightness > 0:
        x = (x * uniform(brightness)).clamp(0, 1)
    grey_weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    if contrast > 0:
        grey = (x * grey_weights).sum(1, keepdim=True) if c == 3 else x
        f = uniform(contrast)
        x = (f * x + (1 - f) * grey.mean((1, 2, 3), keepdim=True)).clamp(0, 1)
    if saturation > 0 and c == 3:
        f = uniform(saturation)
        x = (f * x + (1 - f) * (x * grey_weights).sum(1, keepdim=True)).clamp(0, 1)
    if dataset is not None:
        x = (x - mean) / std
    return x


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
    check_name(name)
    _check_split(split)
    root = data_dir(root)
    if name in ("mnist", "fashion_mnist"):
        from torchvision import datasets
        check_idx_md5(name, root)
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        return cls(str(root), train=(split == "train"), transform=transform,
                   target_transform=target_transform, download=False)
    return CachedImageDataset(name, split, transform, target_transform, root)



# --------------------------------------------------------------------------
# Preparing the data: the installer, one call away
# --------------------------------------------------------------------------

def prepare(names=None, root=None, verbose: bool = True) -> dict:
    """Download (if needed), check and cache datasets; see :func:`helpers.data_prepare.prepare`.

    The installer builds on this module, so it is imported here, when called,
    rather than at the top (that would be an import cycle); a notebook that only
    loads data never imports it.
    """
    from . import data_prepare
    return data_prepare.prepare(names, root, verbose)


def verify(root=None, verbose: bool = True) -> dict:
    """Re-hash every cached split and print counts; see :func:`helpers.data_prepare.verify`."""
    from . import data_prepare
    return data_prepare.verify(root, verbose)


if __name__ == "__main__":
    # `python -m helpers.data prepare|verify`: the command line lives with the installer
    from helpers.data_prepare import main
    sys.exit(main())
