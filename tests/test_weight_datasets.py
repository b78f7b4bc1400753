"""The weight story on three datasets: the dataset choice, its config data, the CIFAR-10
augmentation, and the smoke runs of notebooks 01, 02, 03 and 05 on Fashion-MNIST and CIFAR-10."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import classifiers, config, data, runs, series, weights

# ---------------------------------------------------------------------------
# Augmentation (helpers.data.augment_images)
# ---------------------------------------------------------------------------

OFF = {"flip": False, "crop_padding": 0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}


def _images(n=16, c=3, size=8, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_augment_shape_dtype_and_determinism():
    x = _images()
    a = data.augment_images(x, torch.Generator().manual_seed(1))
    b = data.augment_images(x, torch.Generator().manual_seed(1))
    c = data.augment_images(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)                   # same generator state, same batch
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_augment_everything_off_is_the_identity_also_on_normalised_images():
    x = _images()
    assert torch.equal(data.augment_images(x, torch.Generator(), **OFF), x)
    z = data.normalize((x * 255).round().to(torch.uint8), "cifar10")
    assert torch.allclose(data.augment_images(z, torch.Generator(), dataset="cifar10", **OFF), z, atol=1e-5)


def test_flip_really_flips_about_half_the_images():
    x = _images(n=64)
    y = data.augment_images(x, torch.Generator().manual_seed(0), **{**OFF, "flip": True})
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert bool((flipped | kept).all())        # every image is itself or its mirror image
    assert 16 <= int(flipped.sum()) <= 48


def test_crop_keeps_the_size_and_takes_a_window_of_the_padded_image():
    x = _images(n=32, c=3, size=10)
    p = 4
    y = data.augment_images(x, torch.Generator().manual_seed(3), **{**OFF, "crop_padding": p})
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(y[i], padded[i, :, dy:dy + 10, dx:dx + 10])]
        assert hits, f"image {i} is no window of its padded original"
        offsets.append(hits[0])
    assert len(set(offsets)) > 5               # the offsets vary from image to image


def test_colour_jitter_stays_in_range_and_changes_pixels():
    x = _images(n=32)
    y = data.augment_images(x, torch.Generator().manual_seed(4),
                            **{**OFF, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8})
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert (y - x).abs().mean() > 0.01


def test_augment_refuses_a_batch_without_a_channel_axis():
    with pytest.raises(ValueError, match=r"expects images \(N, C, H, W\), found shape \(3, 8, 8\)"):
        data.augment_images(torch.rand(3, 8, 8))


def test_train_stacked_with_augmentation_is_reproducible_and_uses_it():
    spec = {"arch": "mlp", "in_channels": 3, "image_size": 8, "hidden": [8], "n_classes": 10}
    x, y = _images(n=256) * 2 - 1, torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(0))

    def run(augment):
        params = classifiers.init_stacked(spec, [0, 1])
        gens = [torch.Generator().manual_seed(s) for s in (10, 11)]
        classifiers.train_stacked(params, spec, x, y, epochs=1, batch_size=32, lr=1e-2, generators=gens,
                                  augment=augment)
        return weights._vectors(params, spec)

    aug = lambda xb, g: data.augment_images(xb, g, dataset="cifar10")
    assert torch.equal(run(aug), run(aug))
    assert not torch.allclose(run(aug), run(None))


# ---------------------------------------------------------------------------
# The dataset choice and its config data
# ---------------------------------------------------------------------------

def test_dataset_resolves_argument_then_environment_then_mnist(monkeypatch):
    monkeypatch.delenv("LDT_DATASET", raising=False)
    assert config.current_dataset() == "mnist"
    monkeypatch.setenv("LDT_DATASET", "cifar10")
    assert config.current_dataset() == "cifar10"
    assert config.current_dataset("fashion_mnist") == "fashion_mnist"
    assert config.get_config("zoo", "smoke").dataset == "cifar10"


def test_bad_dataset_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("LDT_DATASET", "svhn")
    with pytest.raises(config.SettingError) as err:
        config.current_dataset()
    assert str(err.value) == "LDT_DATASET='svhn' is not accepted: expected one of mnist, fashion_mnist, cifar10"
    with pytest.raises(config.SettingError, match=r"^unknown dataset 'cifar100': expected one of mnist, "):
        config.get_config("zoo", "smoke", dataset="cifar100")
    assert series.main(["--only", "01"]) == 2
    assert capsys.readouterr().err == ("error: LDT_DATASET='svhn' is not accepted: "
                                       "expected one of mnist, fashion_mnist, cifar10\n")
    monkeypatch.delenv("LDT_DATASET")
    assert series.main(["--dataset", "svhn", "--only", "01"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("preset", config.PRESET_NAMES)
def test_mnist_settings_are_the_presets_own(preset, monkeypatch):
    """MNIST keeps its settings exactly, so its artifacts (keyed by them) and numbers stay."""
    monkeypatch.delenv("LDT_DATASET", raising=False)
    for section in ("zoo", "vae", "weight_diffusion", "evaluation", "setup"):
        assert dict(config.get_config(section, preset, dataset="mnist")) == config.SECTIONS[section][preset]
    ms = weights.zoo_config(preset, "multiseed", dataset="mnist")
    assert dict(ms) == {**config.ZOO[preset], **config.ZOO_MULTISEED[preset]}


def test_cifar_config_reaches_the_zoo():
    cfg = weights.zoo_config("smoke", "multiseed", dataset="cifar10")
    spec = weights.zoo_spec(cfg)
    assert cfg.dataset == "cifar10" and spec["in_channels"] == 3 and spec["image_size"] == 32
    assert 5_000 <= classifiers.count_params(spec) <= 20_000       # a tiny CNN, like MNIST's 11,250
    assert weights.zoo_augment(cfg) is not None
    assert weights.zoo_augment(weights.zoo_config("smoke", dataset="mnist")) is None
    info = config.dataset_info("cifar10")
    assert info.label == "CIFAR-10" and info.acc_label == "CIFAR-10 test accuracy (%)"
    assert config.dataset_info("mnist").acc_bar == 95.0 and config.dataset_info("cifar10").acc_bar < 95.0
    assert config.get_config("evaluation", "default", dataset="fashion_mnist").dataset == "fashion_mnist"
    assert "fashion_mnist" in config.get_config("setup", "smoke", dataset="fashion_mnist").datasets
    # a key only a dataset adds is still type-checked
    with pytest.raises(config.SettingError, match="setting zoo.augment expects dict"):
        config.get_config("zoo", "smoke", dataset="cifar10", augment=3)


def test_metric_tag():
    assert runs.metric_tag("mnist") == ""
    assert runs.metric_tag("mnist", "multiseed") == "_multiseed"
    assert "generated_median_acc" + runs.metric_tag("cifar10") == "generated_median_acc_cifar10"
    assert runs.metric_tag("fashion_mnist", "multiseed") == "_multiseed_fashion_mnist"


# ---------------------------------------------------------------------------
# The weight story in the smoke preset, on Fashion-MNIST and CIFAR-10
# ---------------------------------------------------------------------------

STORY = [p for p in series.notebook_paths(["01", "02", "03", "05"])]
EXPECTED = {"01": ["zoo_mean_test_acc", "multiseed_barrier_aligned"], "02": ["recon_acc_drop_pp"],
            "03": ["train_median_acc", "generated_median_acc", "direct_median_acc"],
            "05": ["eval_generated_mean_acc", "eval_noise_max_iou", "eval_multiseed_generated_frontier_margin"]}


@pytest.fixture(scope="module")
def story_outputs(tmp_path_factory):
    return {d: tmp_path_factory.mktemp(d) for d in ("fashion_mnist", "cifar10")}


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
@pytest.mark.parametrize("path", STORY, ids=[p.name[:2] for p in STORY])
def test_weight_story_runs_in_smoke_on_other_datasets(dataset, path, story_outputs):
    out = story_outputs[dataset]
    run_dir = out / "runs" / "test"
    env = {"LDT_PRESET": "smoke", "LDT_DATASET": dataset, "LDT_OUTPUT_DIR": str(out),
           "LDT_RUN_DIR": str(run_dir), "LDT_PROGRESS": "0"}
    series.execute_notebook(path, run_dir / path.name, timeout=600, env=env)
    number = path.name[:2]
    logged = {r["name"]: r["value"] for r in runs.read_metrics(run_dir / "metrics.csv") if r["notebook"] == number}
    expected = [m + f"_{dataset}" for m in EXPECTED[number]]
    assert all(m in logged and math.isfinite(logged[m]) for m in expected), (expected, sorted(logged))
    assert all(name.endswith(f"_{dataset}") for name in logged), sorted(logged)   # never MNIST's names
    figures = list((out / "figures" / "smoke").glob(f"{number}_*.png"))
    assert figures and all(f.stem.endswith(f"_{dataset}") for f in figures), figures
