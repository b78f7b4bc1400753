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
    assert torch.allclose(generation.standardize_accuracy(torch.tensor([90.0, 94.0]), info),
                          torch.tensor([0.0, 2.0]))
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


def test_heldout_split_is_deterministic_disjoint_and_checked():
    runs = [5, 0, 3, 3, 1, 7, 2, 0, 6, 4]           # checkpoints' run ids, repeated and unordered
    train, held = generation.heldout_split(runs, 3, seed=0)
    assert (train, held) == generation.heldout_split(runs, 3, seed=0)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == list(range(8))
    assert held == sorted(held) and train == sorted(train)
    splits = {tuple(generation.heldout_split(runs, 3, seed=s)[1]) for s in range(6)}
    assert len(splits) > 1                           # the seed chooses the held-out runs
    assert generation.heldout_split(runs, 0, seed=0) == (list(range(8)), [])
    with pytest.raises(ValueError, match=r"^heldout_runs: expected a whole number from 0 to 7 \(the zoo has 8 runs\), found 8$"):
        generation.heldout_split(runs, 8, seed=0)


def test_best_step_picks_the_minimum_of_a_curve():
    assert generation.best_step([200, 400, 600, 800], [0.9, 0.7, 0.8, 0.7]) == (400, 0.7)   # earliest on ties
    assert generation.best_step([100], [2.0]) == (100, 2.0)
    with pytest.raises(ValueError, match=r"^best_step: expected as many steps as losses \(at least one\), found 2 steps and 1 losses$"):
        generation.best_step([1, 2], [0.5])


def test_fixed_draw_loss_is_the_objective_with_fixed_draws():
    sched = diffusion.NoiseSchedule.make("linear", 50)
    x0 = torch.randn(6, 4)

    class Zero(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return torch.zeros_like(x)

    # predicting x0 = 0 costs the mean square of the data whatever the draws; eps = 0 about 1
    assert generation.fixed_draw_loss(Zero(), sched, x0, prediction="x0") == pytest.approx(x0.pow(2).mean().item(), rel=1e-6)
    assert 0.7 < generation.fixed_draw_loss(Zero(), sched, x0, prediction="eps", n_draws=64) < 1.3
    den = generation.make_denoiser(4, WD)
    torch.nn.init.normal_(den.out.weight, std=0.5)           # a fresh denoiser outputs zeros
    den.eval()
    c = torch.zeros(6)
    a = generation.fixed_draw_loss(den, sched, x0, c, "x0", n_draws=8, seed=1)
    assert a == generation.fixed_draw_loss(den, sched, x0, c, "x0", n_draws=8, seed=1)
    assert a != generation.fixed_draw_loss(den, sched, x0, c, "x0", n_draws=8, seed=2)


def test_heldout_runs_are_kept_out_logged_and_early_stopping_keeps_the_minimum(monkeypatch):
    from types import SimpleNamespace
    from helpers import config
    vae_model, _ = _tiny_vae()
    torch.manual_seed(1)
    vectors = 0.1 * torch.randn(24, 151)
    ds = SimpleNamespace(vectors=vectors, metrics=[{"run": i // 3} for i in range(24)],    # 8 runs x 3 checkpoints
                         test_acc=torch.linspace(90.0, 95.0, 24))
    monkeypatch.setattr(vae, "build_or_load_vae", lambda *a, **k: (vae_model, {"dataset": ds}))
    zoo_cfg, vae_cfg = weights.zoo_config("smoke", "multiseed"), config.get_config("vae", "smoke")
    wd = config.get_config("weight_diffusion", "smoke", train_steps=60, warmup_steps=5, hidden=32, prediction="x0",
                           heldout_runs=2, heldout_every=20, heldout_draws=4, heldout_keep_best=True)
    assert "heldout_runs" not in generation.weight_diffusion_key(zoo_cfg, vae_cfg, {**wd, "heldout_runs": 0})["weight_diffusion"]
    assert generation.weight_diffusion_key(zoo_cfg, vae_cfg, wd)["weight_diffusion"]["heldout_runs"] == 2
    model, info = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, wd)
    hd = info["heldout"]
    assert hd["runs"] == generation.heldout_split(range(8), 2, 0)[1] and hd["n_heldout"] == 6 and info["n_train"] == 18
    assert hd["step"] == [20, 40, 60] and len(hd["train"]) == len(hd["heldout"]) == 3
    assert hd["kept_step"] == hd["best_step"] == generation.best_step(hd["step"], hd["heldout"])[0]
    # the returned weights are those of the held-out minimum: their held-out loss is the logged minimum
    held = torch.tensor([m["run"] in hd["runs"] for m in ds.metrics])
    u = generation.training_latents(vae_model, ds)
    acc = ds.test_acc[~held]
    c_held = (ds.test_acc[held] - acc.mean()) / acc.std()
    sched = diffusion.NoiseSchedule.make(wd.schedule, wd.T)
    loss = generation.fixed_draw_loss(model.x0_model, sched, u[held], c_held, "x0", 4, wd.seed)
    assert loss == pytest.approx(min(hd["heldout"]), rel=1e-5)
    # without early stopping the last weights come back (same curve: the same training)
    last, info_last = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, {**wd, "heldout_keep_best": False})
    assert info_last["heldout"]["kept_step"] == 60 and info_last["heldout"]["heldout"] == pytest.approx(hd["heldout"])
    assert generation.fixed_draw_loss(last.x0_model, sched, u[held], c_held, "x0", 4, wd.seed) == pytest.approx(hd["heldout"][-1], rel=1e-5)
    # the curve is stored with the denoiser and comes back from the cache
    _, again = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, wd)
    assert again["heldout"]["heldout"] == pytest.approx(hd["heldout"])
