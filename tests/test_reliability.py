"""Nothing wrong is ever trusted: checksummed artifacts that record their settings, range-checked
settings and variables, nothing non-finite saved or logged, one meaning for every path, run records
that never lose a row, errors before the work, and a rebuild only for real corruption.

Every case is built on small files the test makes; nothing is downloaded.
"""

import copy
import json
import os
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import artifacts, config, data, runs, runtime
from helpers import classifiers as C
from helpers import weights as W

REPO = config.repo_root()


# ============================================================== artifacts: checksums and corruption

def _flip(path, n=64):
    """Flip ``n`` bytes of a file's tensor data (at its end, where safetensors puts the data)."""
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - n - 8, len(raw) - 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


class _Builder:
    """A cached artifact: a tensor and a metadata key its loader needs, made by settings ``cfg``."""

    def __init__(self, cfg=None, value=None):
        self.calls, self.cfg = 0, cfg or {"seed": 0, "lr": 1e-3}
        self.value = torch.linspace(-1, 1, 64).reshape(8, 8) if value is None else value

    def build(self):
        self.calls += 1
        return self.value

    @staticmethod
    def save(obj, path):
        artifacts.save_tensors(path, {"w": obj}, {"spec": {"arch": "toy"}, "acc": 86.95})

    @staticmethod
    def load(path):
        tensors, meta = artifacts.load_tensors(path)
        assert meta["spec"] == {"arch": "toy"}            # KeyError if the key is missing
        return tensors["w"].view(8, 8)                    # RuntimeError if the length is wrong

    def cached(self):
        return artifacts.cached("toy", self.cfg, self.build, self.save, self.load, verbose=False)

    @property
    def path(self):
        return artifacts.artifact_path("toy", self.cfg)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    b = _Builder()
    b.cached()
    assert b.calls == 1
    return b


def _rebuilt_once(toy, capsys, *needles):
    """The next cached() call warns in one line naming the file, rebuilds, and the result is right."""
    capsys.readouterr()
    out = toy.cached()
    printed = capsys.readouterr().out.strip().splitlines()
    assert toy.calls == 2 and torch.equal(out, toy.value)
    assert len(printed) == 1 and printed[0].startswith("warning: ") and str(toy.path) in printed[0]
    assert printed[0].endswith("Rebuilding it from its settings.")
    for needle in needles:
        assert needle in printed[0]
    assert torch.equal(toy.cached(), out) and toy.calls == 2      # the rebuilt file is trusted again


def test_file_records_its_settings_and_checksum(toy):
    tensors, meta = artifacts.load_tensors(toy.path)
    assert meta == {"spec": {"arch": "toy"}, "acc": 86.95, "settings": {"seed": 0, "lr": 1e-3}}
    header = json.loads(toy.path.read_bytes()[8:8 + int.from_bytes(toy.path.read_bytes()[:8], "little")])
    assert header["__metadata__"]["sha256"] == artifacts.tensors_digest(tensors, header["__metadata__"]["json"])


def test_flipped_bytes_and_changed_metadata_are_rebuilt(toy, capsys):
    _flip(toy.path)
    with pytest.raises(artifacts.ArtifactError, match="is corrupted: its bytes changed"):
        artifacts.load_tensors(toy.path)
    _rebuilt_once(toy, capsys, "is corrupted: its bytes changed since it was written")
    toy.path.write_bytes(toy.path.read_bytes().replace(b"86.95", b"99.95"))   # same length, valid JSON
    toy.calls = 1
    _rebuilt_once(toy, capsys, "is corrupted")


def test_artifact_of_other_settings_copied_over_is_rebuilt_naming_both(toy, capsys):
    """The attack: another setting's file copied to this setting's name."""
    other = _Builder({"seed": 7, "lr": 1e-3}, value=torch.zeros(8, 8))
    other.cached()
    toy.path.write_bytes(other.path.read_bytes())
    _rebuilt_once(toy, capsys, "was made with other settings: recorded seed=7; requested seed=0")
    # outside cached(), the name alone gives it away
    toy.path.write_bytes(other.path.read_bytes())
    with pytest.raises(artifacts.ArtifactError, match="other settings than its name says .*'seed': 7"):
        artifacts.load_tensors(toy.path)


def test_a_file_without_recorded_settings_is_not_matched(toy, capsys):
    artifacts.save_tensors(toy.path, {"w": torch.zeros(8, 8)}, {"spec": {"arch": "toy"}})   # written by hand
    _rebuilt_once(toy, capsys, "records no settings")
    with artifacts.recording(toy.path, toy.cfg):                  # what a hand-written file must do
        artifacts.save_tensors(toy.path, {"w": toy.value}, {"spec": {"arch": "toy"}})
    assert torch.equal(toy.cached(), toy.value) and toy.calls == 2


def test_zoo_copied_over_another_zoos_file_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    spec = {"arch": "mlp", "in_channels": 1, "image_size": 6, "hidden": [5], "n_classes": 4}
    cfg_a, cfg_b = {"seed": 0, "spec": spec, "n_runs": 2}, {"seed": 1, "spec": spec, "n_runs": 3}
    built = []

    def zoo(cfg):
        def build():
            built.append(cfg["seed"])
            n = cfg["n_runs"]
            return W.WeightDataset(torch.randn(n, C.count_params(spec)), spec, [{"test_acc": 90.0}] * n, cfg)
        return artifacts.cached("zoo", cfg, build, lambda ds, p: ds.save(p), lambda p: W.WeightDataset.load(p))

    zoo(cfg_a), zoo(cfg_b)
    artifacts.artifact_path("zoo", cfg_b).write_bytes(artifacts.artifact_path("zoo", cfg_a).read_bytes())
    capsys.readouterr()
    ds = zoo(cfg_b)
    assert built == [0, 1, 1] and len(ds.vectors) == 3
    assert "recorded n_runs=2, seed=0; requested n_runs=3, seed=1" in capsys.readouterr().out


def test_non_finite_values_are_never_saved_and_name_the_settings_to_blame(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    bad = torch.ones(8, 8)
    bad[0, :3] = float("nan")
    diverged = _Builder({"seed": 0, "lr": 1e6, "vae": {"lr": 2.0}}, value=bad)
    with pytest.raises(runtime.DivergenceError) as err:
        diverged.cached()
    msg = str(err.value)
    assert "\n" not in msg and str(diverged.path) in msg and "tensor 'w' holds 3 NaN/inf values" in msg
    assert "nothing was saved" in msg and "to blame: lr=1000000.0, vae.lr=2.0" in msg
    assert not diverged.path.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(runtime.DivergenceError, match="training of vae diverged at step 17: the loss is nan; "
                                                      "nothing was saved; the settings most likely to blame: lr=1e6"):
        runtime.check_finite(torch.tensor(float("nan")), model="vae", step=17, blame="lr=1e6")
    runtime.check_finite(torch.tensor([1.0, 2.0]), model="vae", step=1)            # finite: nothing happens


def test_nan_bytes_written_into_a_file_are_caught(toy, capsys):
    raw = bytearray(toy.path.read_bytes())
    nan = np.full(16, np.nan, np.float32).tobytes()
    raw[-len(nan):] = nan
    toy.path.write_bytes(bytes(raw))
    _rebuilt_once(toy, capsys, "is corrupted")


def test_implausible_accuracies_are_refused_on_save_and_load(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match=r"implausible metrics.\[1\].test_acc = 130.0"):
        artifacts.save_tensors(tmp_path / "a.safetensors", {"w": torch.ones(1)},
                               {"metrics": [{"test_acc": 90.0}, {"test_acc": 130.0}]})
    assert not (tmp_path / "a.safetensors").exists()
    artifacts.save_tensors(tmp_path / "b.safetensors", {"w": torch.ones(1)}, {"acc_drop": -0.3, "val_acc": 0.0})


def test_missing_key_and_wrong_shape_are_rebuilt(toy, capsys, tmp_path, monkeypatch):
    with artifacts.recording(toy.path, toy.cfg):
        artifacts.save_tensors(toy.path, {"w": torch.zeros(8, 8)}, {"acc": 1.0})   # valid file, no "spec"
    _rebuilt_once(toy, capsys, "lacks the metadata or tensor 'spec' its loader needs")
    calls = []

    def build():
        calls.append(1)
        return torch.nn.Linear(4, 3)

    def save(model, path):
        artifacts.save_tensors(path, {f"model.{k}": v for k, v in model.state_dict().items()})

    def load(path):
        return artifacts.load_state(torch.nn.Linear(4, 3), artifacts.load_tensors(path)[0], path, prefix="model.")

    first = artifacts.cached("lin", {}, build, save, load, verbose=False)
    path = artifacts.artifact_path("lin", {})
    with artifacts.recording(path, {}):
        artifacts.save_tensors(path, {"model.weight": torch.zeros(3, 5), "model.bias": torch.zeros(3)})
    capsys.readouterr()
    again = artifacts.cached("lin", {}, build, save, load, verbose=False)
    line = capsys.readouterr().out.strip()
    assert len(calls) == 2 and "\n" not in line and str(path) in line
    assert "parameter 'weight' expected shape (3, 4), found (3, 5)" in line
    assert again.weight.shape == first.weight.shape == (3, 4)


def test_other_load_errors_are_raised_with_the_file_named_and_the_file_kept(toy, capsys):
    """An out-of-memory error (here a RuntimeError from the loader) is not corruption."""
    good = toy.path.read_bytes()

    def out_of_memory(path):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError, match="out of memory") as err:
        artifacts.cached("toy", toy.cfg, toy.build, toy.save, out_of_memory, verbose=False)
    assert f"while loading the artifact {toy.path}; the file was kept" in "".join(err.value.__notes__)
    assert toy.calls == 1 and toy.path.read_bytes() == good


def test_old_unchecked_and_non_object_files_are_rebuilt(toy, capsys):
    from safetensors.torch import save
    toy.path.write_bytes(save({"w": torch.zeros(8, 8)}, metadata={"json": json.dumps({"spec": {"arch": "toy"}})}))
    _rebuilt_once(toy, capsys, "has no checksum (written by an older version)")
    artifacts.save_tensors(toy.path, {"w": torch.zeros(8, 8)}, ["spec"])   # checksum fine, JSON a list
    toy.calls = 1
    _rebuilt_once(toy, capsys, "its metadata is a list")


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    folder = tmp_path / "x.safetensors"
    folder.mkdir()
    with pytest.raises(artifacts.ArtifactError, match=f"{folder} cannot be read"):
        artifacts.load_tensors(folder)
    path = tmp_path / "t.safetensors"
    artifacts.save_tensors(path, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.load_tensors(path, hint="Run notebook 01.")
    msg = str(err.value)
    assert str(path) in msg and "corrupted" in msg and msg.endswith("Run notebook 01.") and "\n" not in msg


# ============================================================== stale temporary files

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tmp(folder, name, age):
    path = folder / name
    path.write_bytes(b"x" * 100)
    os.utime(path, (time.time() - age, time.time() - age))
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
    artifacts.cached("thing", {"seed": 0}, lambda: torch.ones(2), lambda o, p: artifacts.save_tensors(p, {"x": o}),
                     lambda p: artifacts.load_tensors(p)[0]["x"], verbose=False)
    assert not killed.exists() and not old_format.exists() and not ancient.exists()
    assert just_killed.exists() and writing.exists() and other.exists()
    assert len(list(tmp_path.iterdir())) == 4


def test_atomic_write_names_its_tmp_with_pid_and_cleans_its_target(tmp_path):
    target = tmp_path / "metrics.csv"
    stale = _tmp(tmp_path, f".metrics.csv.{_dead_pid()}.abcdef.tmp", age=120)
    with artifacts.atomic_write(target, "w") as f:
        seen = [p.name for p in tmp_path.glob(".metrics.csv.*.tmp")]
        f.write("a,b\n")
    assert not stale.exists() and target.read_text() == "a,b\n"
    assert len(seen) == 1 and seen[0].startswith(f".metrics.csv.{os.getpid()}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


# ============================================================== settings: ranges and cross-checks

def _presets(section):
    """Every (preset, dataset) combination's checked config of ``section``."""
    datasets = config.DATASET_NAMES if section in config.DATASET_SECTIONS else [None]
    return [config.get_config(section, p, **({"dataset": d} if d else {}))
            for p in config.PRESET_NAMES for d in datasets]


def test_every_preset_key_has_a_rule_and_every_preset_value_passes_it():
    for section in config.SECTIONS:
        for cfg in _presets(section):                 # get_config checked every value and cross-check
            assert set(cfg) <= set(config.RULES[section]), (section, set(cfg) - set(config.RULES[section]))
    for kind, block in (("multiseed", config.ZOO_MULTISEED), ("wide", config.ZOO_WIDE)):
        rules, _ = config.rules_of(f"zoo ({kind})")
        for preset, values in block.items():
            assert set(values) <= set(rules), kind
            config.check_config(f"zoo ({kind})", {**config.ZOO[preset], **values})
            for entry in config.WEIGHT_DATASETS.values():
                config.check_config(f"zoo ({kind})", {**config.ZOO[preset], **values,
                                                      **entry.get(f"zoo_{kind}", {}).get(preset, {})})


@pytest.mark.parametrize("section, key, value, allowed", [
    ("setup", "n_show", 0, "int in [1, 1024]"),
    ("zoo", "epochs", -1, "float in (0, 10000]"),
    ("zoo", "n_runs", 0, "int in [1, 1024]"),
    ("zoo", "batch_size", 0, "int in [1, 65536]"),
    ("zoo", "checkpoints_per_run", 0, "int in [1, 100000]"),
    ("zoo", "val_size", -5, "int in [1, 30000]"),
    ("zoo", "train_subset", 0, "int in [1, 60000] or None"),
    ("vae", "hidden", 0, "int in [1, 65536]"),
    ("vae", "lr", float("nan"), "float in (0, 10]"),
    ("weight_diffusion", "ddim_steps", 10**6, "int in [1, 100000]"),
    ("weight_diffusion", "clip_x0", -1, "float in (0, 1e+06] or None"),
    ("weight_diffusion", "guidance", -5, "float in [0, 100]"),
    ("weight_diffusion", "eta", -1, "float in [0, 1]"),
    ("weight_diffusion", "p_uncond", 1.5, "float in [0, 1]"),
    ("weight_diffusion", "schedule", "cos", "str: one of 'linear', 'cosine'"),
    ("wide_conditioning", "target_quantiles", [0.1], "a list of 2 of float in [0, 1]"),
    ("catdog", "den_objective", "vit", "str: one of 'ddpm', 'flow'"),
    ("catdog", "ae_channels", [8, 0], "a non-empty list of int in [1, 65536]"),
    ("evaluation", "zoo_preset", "fast", "str: one of 'smoke', 'default', 'full'"),
    ("digits", "gen_size", "huge", "str: one of 'tiny', 'small'"),
    ("digits", "fashion", 1, "bool"),
])
def test_out_of_range_values_are_refused_in_one_line(section, key, value, allowed):
    with pytest.raises(config.SettingError) as err:
        config.get_config(section, "smoke", **{key: value})
    assert str(err.value) == f"setting {section}.{key} expects {allowed}, found {value!r}"
    cfg = config.get_config(section, "smoke")
    with pytest.raises(config.SettingError, match=f"setting {section}.{key} expects"):
        cfg[key] = value                                               # assignment is checked too
    assert cfg == config.get_config(section, "smoke")                  # the refused value was not stored


@pytest.mark.parametrize("section, overrides, message", [
    ("weight_diffusion", {"ddim_steps": 101}, "setting weight_diffusion.ddim_steps expects at most T = 100, found 101"),
    ("weight_diffusion", {"warmup_steps": 301}, "expects at most train_steps = 300, found 301"),
    ("catdog", {"ddim_steps": 201}, "setting catdog.ddim_steps expects at most T = 200, found 201"),
    ("catdog", {"val_size": 1000}, "setting catdog.val_size expects below n_train = 1000, found 1000"),
    ("digits", {"n_train": 59500}, "n_train + val_size at most the 60,000 training images, found 59500"),
    ("zoo", {"train_subset": 59000}, "setting zoo.train_subset expects train_subset + val_size at most"),
    ("catdog", {"guidance_interval": [0.8, 0.1]}, "setting catdog.guidance_interval expects [low, high] with low < high"),
    ("wide_conditioning", {"target_quantiles": [0.9, 0.1]}, "expects [low, high] with low < high"),
])
def test_values_that_depend_on_each_other_are_checked_before_any_work(section, overrides, message):
    with pytest.raises(config.SettingError, match=re.escape(message)):
        config.get_config(section, "smoke", **overrides)
    cfg = config.get_config(section, "smoke")
    key, value = next(iter(overrides.items()))
    with pytest.raises(config.SettingError):
        cfg[key] = value


def test_derived_zoo_configs_are_checked_too():
    with pytest.raises(config.SettingError, match=r"setting zoo \(wide\).acc_hi expects above acc_lo = 20.0"):
        W.zoo_config("smoke", "wide", acc_hi=10.0)
    with pytest.raises(config.SettingError, match=r"setting zoo \(multiseed\).warmup expects float in \[0, 1\]"):
        W.zoo_config("smoke", "multiseed", warmup=2.0)


def test_config_refuses_unknown_keys_and_survives_copy_and_pickle():
    cfg = config.get_config("zoo", "smoke", epochs=2)
    with pytest.raises(AttributeError, match=r"config section 'zoo' has no setting 'epoch' \(a typo\?\)"):
        cfg.epoch = 3
    for method in (lambda c: c.update(epoch=3), lambda c: c.setdefault("epoch", 3)):
        with pytest.raises(KeyError, match="has no setting 'epoch'"):
            method(cfg)
    for other in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other == cfg and other.preset == "smoke" and other.section == "zoo"
        with pytest.raises(config.SettingError):
            other.epochs = 0
    plain = config.Config({"a": 1})                             # a hand-made Config is not checked
    plain.b = "x"
    assert plain == {"a": 1, "b": "x"}


# ============================================================== environment variables

@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "0", "10000"])
def test_bad_thread_count_names_the_variable_and_the_range(monkeypatch, value):
    monkeypatch.setenv("LDT_NUM_THREADS", value)
    with pytest.raises(config.SettingError) as err:
        runtime.setup_threads()
    assert str(err.value) == (f"LDT_NUM_THREADS={value!r} is not accepted: expected a whole number "
                              f"from 1 to {4 * os.cpu_count()}")


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
    assert str(err.value).startswith(f"LDT_DEVICE={value!r} is not accepted: expected cpu, cuda, cuda:N or mps")
    assert "available here: cpu" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setenv("LDT_DEVICE", "cuda")
    with pytest.raises(config.SettingError, match=r"LDT_DEVICE='cuda' is not accepted: this device "
                                                  r"is not available here \(available here: cpu"):
        runtime.setup(verbose=False)
    with pytest.raises(config.SettingError, match="device='cuda:0' is not accepted"):
        runtime.get_device("cuda:0")


@pytest.mark.parametrize("name, value, message", [
    ("LDT_PRESET", "bogus", "LDT_PRESET='bogus' is not accepted: expected one of smoke, default, full"),
    ("LDT_DATASET", "svhn", "LDT_DATASET='svhn' is not accepted: expected one of mnist, fashion_mnist, cifar10"),
    ("LDT_PROGRESS", "yes", "LDT_PROGRESS='yes' is not accepted: expected one of 0, 1"),
    ("LDT_NUM_THREADS", "many", "LDT_NUM_THREADS='many' is not accepted: expected a whole number from 1 to"),
])
def test_setup_checks_every_variable_before_any_work(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(config.SettingError, match=message):
        runtime.setup(verbose=False)


# ============================================================== paths

def test_relative_folders_are_taken_from_the_repository_root_from_any_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name, get in (("LDT_OUTPUT_DIR", config.output_dir), ("LDT_DATA_DIR", data.data_dir),
                      ("LDT_ARTIFACTS_DIR", config.artifacts_dir)):
        monkeypatch.setenv(name, "some/where")
        assert get() == REPO / "some" / "where", name
    monkeypatch.setenv("LDT_OUTPUT_DIR", "out")
    monkeypatch.delenv("LDT_ARTIFACTS_DIR")
    assert config.artifacts_dir() == REPO / "out" / "artifacts" and config.figures_dir() == REPO / "out" / "figures"
    assert config.absolute("notebooks/../x") == REPO / "x" and config.absolute(tmp_path) == tmp_path


def test_setup_prints_the_absolute_folders(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LDT_RUN_DIR", str(tmp_path / "run"))
    runtime.setup(seed=0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (f"folders: data {data.data_dir()} | artifacts {config.artifacts_dir()} | "
                        f"figures {config.preset_figures_dir()} | run {tmp_path / 'run'}")


# ============================================================== fail before the work

def test_output_folder_that_is_a_file_is_found_before_any_work(monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("LDT_OUTPUT_DIR", str(tmp_path / "afile"))
    with pytest.raises(config.SettingError) as err:
        runtime.setup(verbose=False)
    assert str(err.value).startswith(f"LDT_OUTPUT_DIR folder {tmp_path / 'afile'} is not writable")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_artifacts_folder_is_found_before_any_work(monkeypatch, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(folder))
    try:
        with pytest.raises(config.SettingError, match=f"LDT_ARTIFACTS_DIR folder {folder} is not writable"):
            runtime.setup(verbose=False)
    finally:
        folder.chmod(0o700)


def test_unwritable_artifacts_folder_is_found_before_any_work(monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")                 # (works as root too: a folder inside a file)
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path / "afile" / "artifacts"))
    with pytest.raises(config.SettingError, match="LDT_ARTIFACTS_DIR folder .* is not writable"):
        runtime.setup(verbose=False)


def test_missing_data_is_found_at_once_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("LDT_DATA_DIR", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    for s in ("train", "test"):
        for a in "xy":
            (tmp_path / "mnist" / f"{s}_{a}.npy").write_bytes(b"")
    with pytest.raises(data.DataError) as err:
        runtime.setup(verbose=False, needs=["mnist", "fashion_mnist", "catdog"])
    assert str(err.value) == (f"data not prepared in {tmp_path}: fashion_mnist, cifar10. "
                              f"Fix: run python -m helpers.data prepare fashion_mnist cifar10")
    runtime.setup(verbose=False, needs=["mnist"])                     # present: no error


def test_a_notebook_stops_on_a_bad_variable_with_one_line(tmp_path):
    """In a kernel, the package's own errors are shown as one line, not a traceback."""
    import nbformat

    from helpers import series
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from helpers import config, runtime\n"
                                                                   "cfg = config.get_config('zoo', 'smoke')"),
                                         nbformat.v4.new_code_cell("runtime.setup()")])
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(Exception) as err:
        series.execute_notebook(path, tmp_path / "out.ipynb", timeout=120,
                                env={"LDT_NUM_THREADS": "10000", "PYTHONPATH": str(REPO)})
    assert "LDT_NUM_THREADS" in str(err.value)
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[1].outputs
    assert len(outputs) == 1 and outputs[0].output_type == "error" and outputs[0].ename == "SettingError"
    assert outputs[0].traceback == [f"SettingError: LDT_NUM_THREADS='10000' is not accepted: expected a whole "
                                    f"number from 1 to {4 * os.cpu_count()}"]


# ============================================================== run records

def test_log_metric_refuses_non_finite_values_and_impossible_accuracies(monkeypatch, tmp_path):
    monkeypatch.setenv("LDT_RUN_DIR", str(tmp_path))
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"metric 02 recon_loss is {value}: a non-finite number is never"):
            runs.log_metric("02", "recon_loss", value)
    with pytest.raises(ValueError, match=r"metric 01 median_acc = 130.0 is not an accuracy: expected a value in \[0, 100\]"):
        runs.log_metric("01", "median_acc", 130.0)
    runs.log_metric("02", "acc_drop", -0.3)                            # a difference of accuracies may be negative
    runs.log_metric("01", "median_acc", 98.4)
    assert [(r["name"], r["value"]) for r in runs.read_metrics(tmp_path / "metrics.csv")] == \
        [("acc_drop", -0.3), ("median_acc", 98.4)]


def test_two_processes_logging_200_metrics_each_keep_all_400_rows(tmp_path):
    code = ("import sys; from helpers import runs\n"
            "for i in range(200): runs.log_metric(sys.argv[1], f'm{i}', i, preset='smoke', verbose=False)")
    env = {**os.environ, "LDT_RUN_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, nb], env=env) for nb in ("01", "06")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = runs.read_metrics(tmp_path / "metrics.csv")
    assert len(rows) == 400 and {(r["notebook"], r["name"]) for r in rows} == \
        {(nb, f"m{i}") for nb in ("01", "06") for i in range(200)}


@pytest.mark.parametrize("damage, reason", [
    (b"01,acc,98.0,smoke\n", "expected the header notebook,name,value,preset, found 01,acc,98.0,smoke"),
    (b"notebook,name,value,preset\n\xff\xfe junk\x00\n", "unreadable (UnicodeDecodeError)"),
    (b"notebook,name,value,preset\n01,acc,ninety,smoke\n", "line 2 is not a row of 4 fields with a number as value: ['01', 'acc', 'ninety', 'smoke']"),
])
def test_a_damaged_metrics_file_is_named_and_set_aside(monkeypatch, tmp_path, capsys, damage, reason):
    monkeypatch.setenv("LDT_RUN_DIR", str(tmp_path))
    (tmp_path / "metrics.csv").write_bytes(damage)
    runs.log_metric("03", "median_acc", 97.0, preset="smoke", verbose=False)
    out = capsys.readouterr().out
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("metrics.csv.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damage                 # nothing silently dropped
    assert out.strip() == (f"warning: {tmp_path / 'metrics.csv'} is damaged ({reason}); set aside as {aside[0]}, "
                           f"starting a fresh one")
    assert runs.read_metrics(tmp_path / "metrics.csv") == [
        {"notebook": "03", "name": "median_acc", "value": 97.0, "preset": "smoke"}]


def test_run_folders_started_in_the_same_second_get_unique_names(tmp_path):
    made = [config.new_run_dir(tmp_path) for _ in range(3)]
    assert len({p.name for p in made}) == 3 and all(p.is_dir() for p in made)
    assert made[1].name == made[0].name + "-2" or made[1].name[:15] != made[0].name[:15]


def test_timings_of_notebooks_sharing_a_run_folder_are_merged(tmp_path):
    runs.log_timing(tmp_path, "01_weight_dataset.ipynb", 12.0, "ok", "smoke")
    runs.log_timing(tmp_path, "06_tiny_digit_generator.ipynb", 30.0, "ok", "smoke")
    runs.log_timing(tmp_path, "01_weight_dataset.ipynb", 11.0, "ok", "smoke")        # a re-run replaces its row
    assert (tmp_path / "timings.csv").read_text() == ("notebook,seconds,status,preset\n"
                                                     "01_weight_dataset.ipynb,11.0,ok,smoke\n"
                                                     "06_tiny_digit_generator.ipynb,30.0,ok,smoke\n")


def test_series_reports_a_bad_variable_in_one_line():
    env = {**os.environ, "LDT_NUM_THREADS": "10000", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "helpers.series", "--only", "00"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: LDT_NUM_THREADS='10000' is not accepted")
