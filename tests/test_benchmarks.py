"""The benchmark scripts still run against the helpers they time (tiny sizes, no timing asserted)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import data

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_catdog_estimate_scales_its_timed_pieces(tmp_path):
    est = _load("estimate_full_catdog")
    out = tmp_path / "estimate.json"
    result = est.main(["--presets", "smoke", "--n-images", "64", "--den-steps", "2", "--threads", "1",
                       "--out", str(out)])
    smoke = result["estimates"]["smoke"]
    parts = ("autoencoder", "sharper_decoder", "judge", "selector", "denoiser", "sampling")
    assert est.PIECES == parts
    assert all(smoke[k] > 0 for k in parts)
    assert smoke["total"] == pytest.approx(sum(smoke[k] for k in parts))
    # the code evaluations of smoke's sweeps: 2 classes x 50 images, 2 w at 5 steps, then 3 more steps, x2 (guidance)
    assert smoke["sampling_code_evaluations"] == 2 * (100 * 5 * 2)
    assert json.loads(out.read_text())["estimates"]["smoke"]["total"] == pytest.approx(smoke["total"])


def test_catdog_estimate_compares_settings_side_by_side(tmp_path):
    est = _load("estimate_full_catdog")
    result = est.main(["--presets", "smoke", "--n-images", "32", "--den-steps", "2", "--threads", "1", "--rounds", "1",
                       "--before", "ae_epochs=3", "den_steps=300", "--out", str(tmp_path / "compare.json")])
    cmp = result["comparison"]
    assert cmp["before_settings"] == {"ae_epochs": 3, "den_steps": 300} and not result["estimates"]
    med = cmp["median_seconds"]
    # three epochs instead of one and 300 denoiser steps instead of 100: both pieces estimated longer before
    assert med["before"]["autoencoder"] > med["now"]["autoencoder"]
    assert med["before"]["denoiser"] > med["now"]["denoiser"]
    assert cmp["before_over_now"] == pytest.approx(med["before"]["total"] / med["now"]["total"])


def _prepared() -> bool:
    """The prepared cache's files are there (the data tests check their content)."""
    return all(p.exists() for name in ("mnist", "cifar10") for split in data.SPLITS
               for p in data.cache_paths(name, split, data.data_dir()))


@pytest.mark.skipif(not _prepared(), reason="data not prepared (make data)")
def test_real_torchvision_style_mnist_matches_tensors():
    ds = _load("common").CachedImageDataset("mnist", "test")
    assert len(ds) == 10000 and ds.data.shape == (10000, 28, 28) and ds[0][0].mode == "L"
    x, y = data.load_tensors("mnist", "test")
    for i in (0, 1, 4321, 9999):
        img, label = ds[i]
        assert np.array_equal(np.asarray(img), x[i, 0].numpy()) and label == y[i].item()


@pytest.mark.skipif(not _prepared(), reason="data not prepared (make data)")
def test_real_torchvision_cifar_gives_pil_images():
    ds = _load("common").CachedImageDataset("cifar10", "train")
    img, label = ds[7]
    x, y = data.load_tensors("cifar10", "train")
    assert img.mode == "RGB" and img.size == (32, 32) and len(ds) == 50000
    assert np.array_equal(np.asarray(img), x[7].permute(1, 2, 0).numpy()) and label == y[7].item()


def test_median_seconds_warms_up_once_and_takes_the_median():
    import time as _time

    calls, delays = [], iter([0.3, 0.2, 0.0, 0.0])  # warm-up, then three timed calls

    def fn():
        calls.append(1)
        _time.sleep(next(delays))

    t = _load("common").median_seconds(fn, repeats=3)
    assert len(calls) == 4
    assert t < 0.05  # the median of (0.2, 0, 0) s; the mean would be 0.067 s, the warm-up 0.3 s


def test_settings_from_the_command_line_reject_what_is_not_a_literal():
    parse = _load("common").parse_settings
    with pytest.raises(SystemExit, match="ae_epochs: expected a Python literal"):
        parse(["ae_epochs=eight"])
    with pytest.raises(SystemExit, match="expected key=value"):
        parse(["ae_epochs"])
    assert parse(["den_attention=False", "grid=[1.0, 2.5]"]) == {"den_attention": False, "grid": [1.0, 2.5]}


@pytest.mark.skipif(not _prepared(), reason="data not prepared (make data)")
def test_validate_catdog_reports_the_rule_on_the_validation_split(tmp_path):
    out = tmp_path / "validation.jsonl"
    tiny = ["n_train=300", "val_size=100", "ae_epochs=1", "ae_adv_steps=3", "ae_adv_warmup=1", "den_steps=3",
            "sel_epochs=1", "n_eval_per_class=8", "ddim_steps=2", "grid=[1.0, 3.0]"]
    record = _load("validate_catdog").main(["--preset", "smoke", *tiny, "--out", str(out)])
    assert set(record["rows"]) == {1.0, 3.0} and record["chosen_w"] in (1.0, 3.0)
    assert all(0 <= r["class_consistency"] <= 100 and r["feature_fd"] >= 0 for r in record["rows"].values())
    assert record["overrides"]["ae_epochs"] == 1 and "latent U-Net" in record["wall_seconds"]
    assert set(record["recon_fd_val"]) == {"first stage", "sharper decoder"}
    assert min(record["recon_fd_val"].values()) >= 0
    assert json.loads(out.read_text().splitlines()[-1])["chosen_w"] == record["chosen_w"]
