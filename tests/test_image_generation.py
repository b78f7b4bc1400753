"""The U-Net denoiser and the image pipeline of notebook 04: shapes, null class, caching, sampling, guidance choice."""

import pytest
import torch

from helpers import config, denoisers, diffusion, image_ae, image_eval, image_generation


def _unet(**kw):
    args = dict(in_channels=4, width=16, mults=(1, 2), n_res=1, attention=True, time_dim=16, n_classes=2)
    args.update(kw)
    return denoisers.UNetDenoiser(**args)


def _perturb(model, seed=0):
    """Give the zero-initialised layers random weights, so outputs depend on the inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("attention", [True, False])
def test_unet_keeps_the_latent_shape_and_starts_at_zero(attention):
    model = _unet(attention=attention)
    x = torch.randn(3, 4, 8, 8)
    out = model(x, torch.tensor([0, 10, 99]), cond=torch.tensor([0, 1, 0]))
    assert out.shape == x.shape
    # zero-initialised output convolution: the untrained model predicts eps = 0
    assert torch.count_nonzero(out) == 0


def test_unet_null_class_and_dropped_rows():
    model = _perturb(_unet()).eval()
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([5, 5, 50, 50])
    c = torch.tensor([0, 1, 0, 1])
    uncond = model(x, t, cond=None)
    dropped = model(x, t, cond=c, drop_cond=torch.ones(4, dtype=torch.bool))
    assert torch.allclose(uncond, dropped, atol=1e-6)
    cat, dog = model(x, t, cond=torch.zeros(4, dtype=torch.long)), model(x, t, cond=torch.ones(4, dtype=torch.long))
    assert not torch.allclose(cat, dog)
    # dropping only row 0 changes row 0 and nothing else
    part = model(x, t, cond=c, drop_cond=torch.tensor([True, False, False, False]))
    full = model(x, t, cond=c)
    assert torch.allclose(part[0], uncond[0], atol=1e-6) and torch.allclose(part[1:], full[1:], atol=1e-6)


def test_unet_rejects_wrong_input_shape_and_unexpected_cond():
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 4, H, W\); got \(2, 3, 8, 8\)"):
        _unet()(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        _unet(n_classes=None)(torch.randn(2, 4, 8, 8), torch.zeros(2, dtype=torch.long), cond=torch.zeros(2))


def test_unet_diffusion_loss_falls():
    g = torch.Generator().manual_seed(0)
    # structured data: a fixed map per class plus a little noise
    base = torch.randn(2, 4, 8, 8, generator=g)
    y = torch.tensor([0, 1] * 32)
    data = base[y] + 0.1 * torch.randn(64, 4, 8, 8, generator=g)
    torch.manual_seed(0)
    model = _unet(width=8, time_dim=8)
    sched = diffusion.NoiseSchedule.make("cosine", 50)
    _, hist = diffusion.train_diffusion(model, data, sched, 80, 16, 3e-3, cond=y, p_uncond=0.1,
                                        generator=torch.Generator().manual_seed(1), progress=False)
    first, last = sum(hist["loss"][:15]) / 15, sum(hist["loss"][-15:]) / 15
    assert last < 0.7 * first


def test_make_denoiser_kinds_and_errors():
    cfg = config.get_config("catdog", "smoke")
    assert isinstance(image_generation.make_denoiser(cfg, (4, 8, 8)), denoisers.UNetDenoiser)
    assert isinstance(image_generation.make_denoiser({**cfg, "den_kind": "mlp"}, (128,)), denoisers.MLPDenoiser)
    with pytest.raises(ValueError, match=r"spatial codes \(C, H, W\); got shape \(128,\)"):
        image_generation.make_denoiser(cfg, (128,))
    with pytest.raises(ValueError, match="unknown den_kind 'gan'"):
        image_generation.make_denoiser({**cfg, "den_kind": "gan"}, (4, 8, 8))


# ---------------------------------------------------------------------------
# The pipeline on tiny untrained models
# ---------------------------------------------------------------------------

def _tiny_generator(seed=0):
    torch.manual_seed(seed)
    ae = image_ae.ImageAutoencoder((4, 8, 8), latent_channels=4, n_cab=1).eval()
    den = _perturb(_unet(width=8, time_dim=8), seed).eval()
    scaler = diffusion.LatentStandardizer(torch.zeros(4, 1, 1), torch.ones(4, 1, 1))
    return image_generation.ImageGenerator(ae, den, diffusion.NoiseSchedule.make("cosine", 50), scaler)


def test_generator_is_deterministic_and_returns_images():
    gen = _tiny_generator()
    labels = torch.tensor([0, 1, 0])
    a = gen.generate(labels, steps=4, guidance=2.0, seed=3)
    b = gen.generate(labels, steps=4, guidance=2.0, seed=3)
    c = gen.generate(labels, steps=4, guidance=2.0, seed=4)
    assert a.shape == (3, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    # batching does not change the samples (the noise is drawn once for the whole set);
    # float rounding differs between batch sizes, and the random tiny model amplifies it
    z_all = gen.sample_latents(labels, steps=4, guidance=2.0, seed=3)
    z_batched = gen.sample_latents(labels, steps=4, guidance=2.0, seed=3, batch_size=2)
    assert torch.allclose(z_all, z_batched, atol=1e-2)


def test_run_frames_one_per_step():
    gen = _tiny_generator()
    frames, captions = image_generation.run_frames(gen, torch.tensor([0, 1]), steps=5, guidance=2.0, seed=0,
                                                   nrow=2)
    assert len(frames) == 6 and captions[-1].endswith("final sample")
    pframes, _ = image_generation.run_frames(gen, torch.tensor([0, 1]), steps=5, guidance=2.0, seed=0,
                                             paired=True, nrow=2)
    assert pframes[0].shape[0] == 2 * frames[0].shape[0]


def test_denoising_path_shapes():
    gen = _tiny_generator()
    z_train = torch.randn(40, 4, 8, 8)
    out = image_generation.denoising_path(gen, torch.tensor([0, 1, 0]), steps=4, guidance=2.0, seed=0,
                                          z_train_std=z_train, n_frames=3, n_background=10)
    assert len(out["paths"]) == 3 and out["paths"][0].shape == (5, 2)
    assert out["background"].shape == (10, 2) and len(out["step_images"]) == 2
    assert out["step_images"][0].shape == (3, 3, 32, 32) and out["step_labels"][0] == "noise"


def test_evaluator_generates_once_and_selector_is_required():
    gen = _tiny_generator()
    judge = image_eval.CatDogCNN((4, 8, 8)).eval()
    real = image_eval.predict(judge, torch.rand(20, 3, 32, 32))[1]
    ev = image_generation.Evaluator(gen, judge, real, n_per_class=3, seed=0)
    r = ev.metrics_at(3, 2.0)
    assert set(r) >= {"class_consistency", "feature_fd", "class_consistency_0", "class_consistency_1"}
    assert ev.images(3, 2.0) is ev.images(3, 2.0)
    with pytest.raises(ValueError, match="no selector"):
        ev.selection(3, 2.0)
    sel = image_generation.Evaluator(gen, None, None, n_per_class=3, seed=0, selector=judge,
                                     val_images=torch.rand(10, 3, 32, 32))
    s = sel.selection(3, 2.0)
    assert 0 <= s["sel_consistency"] <= 100 and s["sel_fd"] >= 0


# ---------------------------------------------------------------------------
# Guidance choice, validation split, caching, the comparison table
# ---------------------------------------------------------------------------

def test_choose_guidance_rule():
    rows = {1.0: {"sel_consistency": 70, "sel_fd": 0.1}, 2.0: {"sel_consistency": 91, "sel_fd": 0.3},
            3.0: {"sel_consistency": 95, "sel_fd": 0.2}, 6.0: {"sel_consistency": 99, "sel_fd": 0.9}}
    # lowest FD among those reaching the target
    assert image_generation.choose_guidance(rows, 90) == 3.0
    # nobody reaches it: the most consistent
    assert image_generation.choose_guidance(rows, 99.5) == 6.0
    # everyone reaches it: the lowest FD overall
    assert image_generation.choose_guidance(rows, 50) == 1.0
    with pytest.raises(ValueError, match="at least one swept w"):
        image_generation.choose_guidance({}, 90)


def test_validation_split_is_disjoint_and_seeded():
    fit, val = image_generation.validation_split(100, 20, seed=0)
    assert len(fit) == 80 and len(val) == 20
    assert set(fit.tolist()).isdisjoint(val.tolist()) and set(fit.tolist()) | set(val.tolist()) == set(range(100))
    assert torch.equal(val, image_generation.validation_split(100, 20, seed=0)[1])
    with pytest.raises(ValueError, match="0 < n_val < n; got n_val=100, n=100"):
        image_generation.validation_split(100, 100)


def test_latent_denoiser_is_cached_by_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = config.get_config("catdog", "smoke", den_width=8, den_time_dim=8, den_steps=5, T=20, den_flip=False)
    z = torch.randn(16, 4, 8, 8)
    y = torch.tensor([0, 1] * 8)
    m1, h1 = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    m2, h2 = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    assert len(list(tmp_path.glob("catdog_latent_denoiser-*.safetensors"))) == 1
    assert h2["loss"] == pytest.approx(h1["loss"])
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # a different autoencoder means a different denoiser
    image_generation.build_or_load_latent_denoiser(cfg, z, y, "otherkey")
    assert len(list(tmp_path.glob("catdog_latent_denoiser-*.safetensors"))) == 2


def test_den_flip_needs_mirrored_codes_and_is_its_own_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = config.get_config("catdog", "smoke", den_width=8, den_time_dim=8, den_steps=5, T=20, den_flip=True)
    z = torch.randn(16, 4, 8, 8)
    y = torch.tensor([0, 1] * 8)
    with pytest.raises(ValueError, match=r"den_flip needs z_std_mirrored of shape \(16, 4, 8, 8\); found None"):
        image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    with pytest.raises(ValueError, match=r"found \(8, 4, 8, 8\)"):
        image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey", z_std_mirrored=z[:8])
    _, h_flip = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey", z_std_mirrored=z.flip(-1))
    cfg.den_flip = False
    _, h_plain = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    # two artifacts, two different trainings (the flipped one draws from twice the codes)
    assert len(list(tmp_path.glob("catdog_latent_denoiser-*.safetensors"))) == 2
    assert h_flip["loss"] != pytest.approx(h_plain["loss"])


def test_mirrored_codes_are_the_codes_of_mirrored_images():
    torch.manual_seed(0)
    ae = image_ae.ImageAutoencoder((8, 8, 8), latent_channels=4, n_cab=1).eval()
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    scaler = diffusion.LatentStandardizer.fit(image_ae.encode_all(ae, x))
    got = image_generation.mirrored_codes(ae, x, scaler)
    assert got.shape == (6, 4, 8, 8)
    assert torch.allclose(got, scaler.standardize(image_ae.encode_all(ae, x.flip(-1))))
    assert not torch.allclose(got, scaler.standardize(image_ae.encode_all(ae, x)))


def test_flat_config_is_the_first_version():
    cfg = config.get_config("catdog", "default")
    flat = image_generation.flat_config(cfg)
    assert flat["latent_channels"] is None and flat["latent_dim"] == 128 and flat["den_kind"] == "mlp"
    assert flat["ae_epochs"] == cfg["flat_ae_epochs"] and flat["ae_w_l1"] == 0.0
    assert cfg["latent_channels"] == 8 and cfg["den_flip"] is True  # the original is not changed
    assert flat["den_flip"] is False  # the first version had no mirrored codes
    assert image_ae.ae_config_key(flat) != image_ae.ae_config_key(cfg)


def test_comparison_table_layout():
    text = image_generation.comparison_table({"flat": {"psnr": 22.1}, "spatial": {"psnr": 25.3, "fd": 0.4}},
                                             {"psnr": "recon PSNR (dB)", "fd": "feature FD"})
    lines = text.splitlines()
    assert len(lines) == 3 and "flat" in lines[0] and "spatial" in lines[0]
    assert "22.1" in lines[1] and "25.3" in lines[1]
    assert "–" in lines[2] and "0.4" in lines[2]


def test_flow_objective_samples_and_bad_objective():
    gen = _tiny_generator()
    flow = image_generation.ImageGenerator(gen.ae, gen.denoiser, gen.sched, gen.scaler, objective="flow")
    a = flow.generate(torch.tensor([0, 1]), steps=3, guidance=2.0, seed=1)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, flow.generate(torch.tensor([0, 1]), steps=3,
                                                                       guidance=2.0, seed=1))
    z, traj = flow.sample_latents(torch.tensor([0, 1]), steps=3, guidance=2.0, seed=1, return_trajectory=True)
    assert len(traj) == 4 and traj[0]["t"] == 1.0 and torch.equal(traj[-1]["x_t"], z)
    with pytest.raises(ValueError, match="unknown objective 'score': expected 'ddpm' or 'flow'"):
        image_generation.ImageGenerator(gen.ae, gen.denoiser, gen.sched, gen.scaler, objective="score")


def test_generator_guidance_interval_is_checked_and_used():
    gen = _tiny_generator()
    flow = image_generation.ImageGenerator(gen.ae, gen.denoiser, gen.sched, gen.scaler, objective="flow",
                                           guidance_interval=[0.0, 1.0])
    ref = image_generation.ImageGenerator(gen.ae, gen.denoiser, gen.sched, gen.scaler, objective="flow")
    labels = torch.tensor([0, 1])
    assert flow.guidance_interval == (0.0, 1.0)
    assert torch.equal(flow.sample_latents(labels, steps=3, guidance=2.0, seed=1),
                       ref.sample_latents(labels, steps=3, guidance=2.0, seed=1))
    with pytest.raises(ValueError, match=r"guidance_interval must satisfy 0 <= lo < hi <= 1; got \(0.9, 0.2\)"):
        image_generation.ImageGenerator(gen.ae, gen.denoiser, gen.sched, gen.scaler, guidance_interval=(0.9, 0.2))


def test_thin_trajectory_keeps_ends_and_true_step_numbers():
    traj = [{"t": 1.0 - k / 50, "x_t": torch.full((1,), float(k))} for k in range(50)] + [{"t": -1, "x_t": None}]
    assert image_generation.thin_trajectory(traj, None) is traj
    assert image_generation.thin_trajectory(traj, 60) is traj
    thin = image_generation.thin_trajectory(traj, 26)
    steps = [d["step"] for d in thin]
    assert len(thin) == 26 and steps[0] == 0 and steps[-1] == 50 and thin[-1]["t"] == -1
    assert all(b > a for a, b in zip(steps, steps[1:])) and steps[1] == 2
    assert all(d["x_t"] is traj[d["step"]]["x_t"] for d in thin)
    with pytest.raises(ValueError, match="max_frames must be at least 2"):
        image_generation.thin_trajectory(traj, 1)


def test_run_frames_thinned_captions_count_the_run_steps():
    gen = _tiny_generator()
    frames, captions = image_generation.run_frames(gen, torch.tensor([0, 1]), steps=8, guidance=2.0, seed=0,
                                                   nrow=2, max_frames=5)
    assert len(frames) == 5
    assert captions[0].startswith("step 0/8") and captions[1].startswith("step 2/8")
    assert captions[-1] == "step 8/8: final sample"
