"""Tests of helpers.generation: denoiser files, latent -> network generation, slider frames."""

import numpy as np
import pytest
import torch

from helpers import animation, artifacts, diffusion, generation, vae, weights

SPEC = {"arch": "cnn", "in_channels": 1, "image_size": 8, "channels": [4], "kernel_size": 3,
        "stride": 2, "pool": False, "hidden": [], "n_classes": 3}
WD = {"seed": 0, "schedule": "linear", "T": 50, "hidden": 32, "n_blocks": 1, "time_dim": 16,
      "dropout": 0.0, "conditional": True, "p_uncond": 0.2, "direct_hidden": 16, "direct_n_blocks": 1}


def _tiny_vae(latent_dim=4):
    torch.manual_seed(0)
    vectors = 0.1 * torch.randn(12, 151)
    model = vae.ParamVAE(151, latent_dim=latent_dim, hidden=16, n_layers=1, beta=0.0,
                         sigma_in=0.0, sigma_z=0.0)
    model.normalizer = weights.Normalizer().fit(vectors, SPEC)
    model.spec = SPEC
    model.latent_standardizer = vae.LatentStandardizer().fit(vae.encode_dataset(model, vectors))
    return model.eval(), vectors


def _info():
    return {"kind": "latent", "schedule": "linear", "T": 50, "cond_mean": 90.0, "cond_std": 2.0,
            "conditional": True, "history": {"loss": [1.0, 0.5]}, "train_seconds": 0.1}


def test_save_load_round_trip_and_errors(tmp_path):
    model = generation.make_denoiser(4, WD)
    torch.nn.init.normal_(model.out.weight)
    path = tmp_path / "d.safetensors"
    generation.save_denoiser(model, path, _info())
    loaded, info = generation.load_denoiser(path, dim=4, kind="latent")
    assert info["cond_mean"] == 90.0 and info["history"]["loss"] == [1.0, 0.5]
    x, t = torch.randn(3, 4), torch.tensor([1, 2, 3])
    with torch.no_grad():
        assert torch.equal(model(x, t, cond=torch.zeros(3)), loaded(x, t, cond=torch.zeros(3)))
    with pytest.raises(artifacts.ArtifactError, match="expected 8, found 4"):
        generation.load_denoiser(path, dim=8)
    with pytest.raises(artifacts.ArtifactError, match="expected an artifact of kind 'direct_weight_denoiser', found kind 'latent_weight_denoiser'"):
        generation.load_denoiser(path, kind="direct")


def test_generate_networks_shapes_determinism_and_condition():
    vae_model, _ = _tiny_vae()
    den = generation.make_denoiser(4, WD)
    torch.nn.init.normal_(den.out.weight, std=0.1)
    den.eval()
    info = _info()
    a = generation.generate_networks(5, den, vae_model, info, steps=5, seed=3)
    b = generation.generate_networks(5, den, vae_model, info, steps=5, seed=3)
    c = generation.generate_networks(5, den, vae_model, info, steps=5, seed=4)
    assert a.shape == (5, 151) and torch.equal(a, b) and not torch.allclose(a, c)
    d, u = generation.generate_networks(4, den, vae_model, info, steps=5, seed=3, target_acc=92.0,
                                        guidance=2.0, return_latents=True)
    assert d.shape == (4, 151) and u.shape == (4, 4)
    # the requested accuracy is standardised with the training set's statistics: (a - 90) / 2
    sched = diffusion.NoiseSchedule.make("linear", 50)
    asked = generation.sample_latents(den, info, 2, steps=3, seed=1, target_acc=torch.tensor([90.0, 94.0]))
    direct = diffusion.ddim_sample(den, sched, (2, 4), steps=3, cond=torch.tensor([0.0, 2.0]),
                                   generator=torch.Generator().manual_seed(1))
    assert torch.allclose(asked, direct)
    res = generation.accuracy_targets_run(den, vae_model, info, [88.0, 92.0], 3,
                                          evaluate=lambda v: torch.full((v.shape[0],), 50.0), steps=3)
    assert res["requested"].tolist() == [88.0] * 3 + [92.0] * 3 and res["achieved"].shape == (6,)
    uncond = generation.make_denoiser(4, {**WD, "conditional": False}).eval()
    with pytest.raises(ValueError, match="without the accuracy condition"):
        generation.sample_latents(uncond, {**info, "conditional": False}, 2, steps=2, target_acc=90.0)


def test_generate_direct_denormalises():
    _, vectors = _tiny_vae()
    normalizer = weights.Normalizer().fit(vectors, SPEC)
    den = generation.make_denoiser(151, WD, direct=True).eval()   # zero output: eps = 0
    info = {"schedule": "linear", "T": 50, "normalizer": normalizer}
    out = generation.generate_direct(3, den, info, steps=4, seed=0)
    assert out.shape == (3, 151)
    # predicting eps = 0 makes DDIM return its scaled starting noise, mapped back to raw units
    x = diffusion.ddim_sample(den, diffusion.NoiseSchedule.make("linear", 50), (3, 151), steps=4,
                              generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, normalizer.denormalize(x))


def test_slider_frames_drive_the_slider_headlessly():
    vae_model, vectors = _tiny_vae()
    den = generation.make_denoiser(4, WD)
    torch.nn.init.normal_(den.out.weight, std=0.5)
    den.eval()
    _, traj = generation.sample_latents(den, _info(), 1, steps=3, seed=0, return_trajectory=True)
    evaluate = lambda v: torch.linspace(10, 40, v.shape[0])  # noqa: E731
    frames, captions, acc = generation.slider_frames(traj, vae_model, SPEC, evaluate,
                                                     reference=vectors[0], dpi=40)
    assert len(frames) == len(captions) == len(acc) == 4
    assert frames[0].dtype == np.uint8 and frames[0].ndim == 3
    assert "40.0 %" in captions[-1] and "done" in captions[-1]
    assert not np.array_equal(frames[0], frames[-1])
    slider = animation.frame_slider(frames, captions)
    first_label, first_image = slider.label.value, slider.image.value
    assert "step 0/3" in first_label
    slider.slider.value = 3
    assert slider.label.value != first_label and "done" in slider.label.value
    assert slider.image.value != first_image and slider.current == 3




def test_x0_denoiser_is_stored_as_itself_and_comes_back_as_a_noise_predictor(tmp_path):
    sched = diffusion.NoiseSchedule.make("linear", 50)
    inner = generation.make_denoiser(4, WD)
    torch.nn.init.normal_(inner.out.weight)
    wrapped = diffusion.EpsFromX0(inner.eval(), sched)
    path = tmp_path / "x0.safetensors"
    generation.save_denoiser(wrapped, path, {**_info(), "prediction": "x0"})
    loaded, info = generation.load_denoiser(path, dim=4, kind="latent")
    assert isinstance(loaded, diffusion.EpsFromX0) and info["prediction"] == "x0" and loaded.dim == 4
    x, t, c = torch.randn(3, 4), torch.tensor([1, 20, 49]), torch.zeros(3)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond=c), wrapped(x, t, cond=c))
        # what the wrapper returns is the noise that goes with the stored network's x0
        assert torch.allclose(diffusion.predict_x0(sched, x, t, loaded(x, t, cond=c)), inner(x, t, cond=c), atol=1e-5)
    # an eps-denoiser's file (no "prediction" in it, as before this option) loads unwrapped
    generation.save_denoiser(inner, tmp_path / "eps.safetensors", _info())
    plain, _ = generation.load_denoiser(tmp_path / "eps.safetensors", dim=4)
    assert not isinstance(plain, diffusion.EpsFromX0)


def test_prediction_option_keys_and_errors():
    from helpers import config
    zoo_cfg = weights.zoo_config("smoke", "multiseed")
    vae_cfg = config.get_config("vae", "smoke")
    wd = config.get_config("weight_diffusion", "smoke")
    assert wd.prediction == "eps" and vae_cfg.permute_augment == 0.0        # the defaults: the old behaviour
    default_key = generation.weight_diffusion_key(zoo_cfg, vae_cfg, wd)
    # the default's cache key is the one it had before the option existed
    assert "prediction" not in default_key["weight_diffusion"]
    assert default_key == generation.weight_diffusion_key(zoo_cfg, vae_cfg, {k: v for k, v in wd.items() if k != "prediction"})
    x0_key = generation.weight_diffusion_key(zoo_cfg, vae_cfg, {**wd, "prediction": "x0"})
    assert x0_key["weight_diffusion"]["prediction"] == "x0" and x0_key != default_key
    with pytest.raises(ValueError, match=r"^prediction: expected one of 'eps', 'x0', found 'v'$"):
        generation.weight_diffusion_key(zoo_cfg, vae_cfg, {**wd, "prediction": "v"})
    with pytest.raises(config.SettingError, match="setting weight_diffusion.prediction expects str"):
        config.get_config("weight_diffusion", "smoke", prediction=1)


def test_a_condition_other_than_the_test_accuracy_is_keyed_stored_and_checked(monkeypatch, tmp_path):
    from types import SimpleNamespace
    from helpers import config
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    vae_model, _ = _tiny_vae()
    torch.manual_seed(1)
    val = torch.linspace(40.0, 95.0, 24)
    ds = SimpleNamespace(vectors=0.1 * torch.randn(24, 151), test_acc=torch.linspace(90.0, 95.0, 24),
                         column=lambda key: {"val_acc": val.double(), "test_acc": torch.linspace(90.0, 95.0, 24).double()}[key])
    monkeypatch.setattr(vae, "build_or_load_vae", lambda *a, **k: (vae_model, {"dataset": ds}))
    zoo_cfg, vae_cfg = weights.zoo_config("smoke", "wide"), config.get_config("vae", "smoke")
    wd = config.get_config("weight_diffusion", "smoke", train_steps=4, warmup_steps=1, hidden=32)
    den, info = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, wd, condition="val_acc")
    assert info["condition"] == "val_acc" and "conditioned_diffusion" in info["path"]
    np.testing.assert_allclose(info["condition_values"], val.numpy())
    assert info["cond_mean"] == pytest.approx(val.mean().item(), rel=1e-6)
    # loaded the second time, with the condition values stored beside the weights
    again, info2 = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, wd, condition="val_acc")
    assert info2["path"] == info["path"] and np.array_equal(info2["condition_values"], info["condition_values"])
    # the default condition (the test accuracy) is another artifact, with no condition values
    _, info3 = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, wd)
    assert info3["path"] != info["path"] and "condition_values" not in info3
    with pytest.raises(ValueError, match="unknown condition 'train_acc'; expected one of test_acc, val_acc, decoded_val_acc"):
        generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, wd, condition="train_acc")
    with pytest.raises(ValueError, match="expected a conditional weight_diffusion config"):
        generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, {**wd, "conditional": False}, condition="val_acc")
