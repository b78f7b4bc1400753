"""The U-Net and the image generator of notebook 04: shapes, null class, caching, sampling, guidance choice."""

import pytest
import torch

from helpers import config, diffusion, image_ae, image_generation


def _unet(**kw):
    args = dict(in_channels=4, width=16, mults=(1, 2), n_res=1, attention=True, time_dim=16, n_classes=2)
    args.update(kw)
    return image_generation.UNetDenoiser(**args)


def _perturb(model, seed=0):
    """Give the zero-initialised layers random weights, so outputs depend on the inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _tiny_generator(objective="flow", **kw):
    torch.manual_seed(0)
    ae = image_ae.ImageAutoencoder((4, 8, 8), latent_channels=4, n_cab=1).eval()
    den = _perturb(_unet(width=8, time_dim=8)).eval()
    scaler = diffusion.LatentStandardizer(torch.zeros(4, 1, 1), torch.ones(4, 1, 1))
    return image_generation.ImageGenerator(ae, den, diffusion.NoiseSchedule.make("cosine", 50), scaler,
                                           objective=objective, **kw)


@pytest.mark.parametrize("attention", [True, False])
def test_unet_keeps_the_latent_shape_and_starts_at_zero(attention):
    model = _unet(attention=attention, n_res=2, mults=(1, 2, 2))
    x = torch.randn(3, 4, 8, 8)
    out = model(x, torch.tensor([0, 10, 99]), cond=torch.tensor([0, 1, 0]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution


def test_unet_state_dict_names_are_stable():
    # cached U-Nets are loaded by these names: they must not change
    keys = set(_unet().state_dict())
    for name in ("time_embed.1.weight", "class_embed.weight", "inp.weight", "down.0.film.weight",
                 "down.1.weight", "down.2.skip.weight", "down.3.qkv.weight", "mid.1.proj.weight",
                 "up.0.conv1.weight", "up.3.qkv.weight", "up.5.norm1.weight", "out_norm.weight", "out.bias"):
        assert name in keys, name


def test_unet_null_class_and_dropped_rows():
    model = _perturb(_unet()).eval()
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([5, 5, 50, 50])
    c = torch.tensor([0, 1, 0, 1])
    uncond = model(x, t, cond=None)
    torch.testing.assert_close(model(x, t, cond=c, drop_cond=torch.ones(4, dtype=torch.bool)), uncond)
    assert not torch.allclose(model(x, t, cond=torch.zeros(4, dtype=torch.long)),
                              model(x, t, cond=torch.ones(4, dtype=torch.long)))
    part = model(x, t, cond=c, drop_cond=torch.tensor([True, False, False, False]))
    torch.testing.assert_close(part[0], uncond[0])
    torch.testing.assert_close(part[1:], model(x, t, cond=c)[1:])
    # one class for the whole batch, and a scalar time
    torch.testing.assert_close(model(x, torch.tensor(5), cond=torch.tensor(1)), model(x, t.fill_(5), cond=c.fill_(1)))


def test_unet_rejects_wrong_input_shape_and_attention_widths():
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 4, H, W\); got \(2, 3, 8, 8\)"):
        _unet()(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by heads; got 18 and 4"):
        image_generation.SelfAttention2d(18)
    with pytest.raises(ValueError, match=r"spatial codes \(C, H, W\); got shape \(32,\)"):
        image_generation.make_denoiser(config.get_config("catdog", "smoke"), (32,))


def test_unet_flow_loss_falls():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 4, 8, 8, generator=g)  # a fixed map per class plus a little noise
    y = torch.tensor([0, 1] * 32)
    data = base[y] + 0.1 * torch.randn(64, 4, 8, 8, generator=g)
    torch.manual_seed(0)
    _, hist = diffusion.train_flow(_unet(width=8, time_dim=8), data, 80, 16, 3e-3, cond=y, p_uncond=0.1,
                                   generator=torch.Generator().manual_seed(1), progress=False)
    assert sum(hist["loss"][-15:]) < 0.7 * sum(hist["loss"][:15])


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_generator_is_deterministic_and_returns_images(objective):
    gen = _tiny_generator(objective)
    labels = torch.tensor([0, 1, 0])
    a = gen.generate(labels, steps=4, guidance=2.0, seed=3)
    assert a.shape == (3, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, gen.generate(labels, steps=4, guidance=2.0, seed=3))
    assert not torch.equal(a, gen.generate(labels, steps=4, guidance=2.0, seed=4))
    # batching does not change the samples (the noise is drawn once for the whole set)
    torch.testing.assert_close(gen.sample_latents(labels, steps=4, guidance=2.0, seed=3),
                               gen.sample_latents(labels, steps=4, guidance=2.0, seed=3, batch_size=2),
                               rtol=1e-3, atol=1e-3)
    z, traj = gen.sample_latents(labels, steps=4, guidance=2.0, seed=3, return_trajectory=True)
    assert len(traj) == 5 and torch.equal(traj[-1]["x_t"], z)


def test_generator_errors_and_guidance_interval():
    gen = _tiny_generator()
    with pytest.raises(ValueError, match="unknown objective 'score': expected 'ddpm' or 'flow'"):
        image_generation.ImageGenerator(gen.ae, gen.denoiser, None, gen.scaler, objective="score")
    with pytest.raises(ValueError, match=r"guidance_interval must satisfy 0 <= lo < hi <= 1; got \(0.9, 0.2\)"):
        image_generation.ImageGenerator(gen.ae, gen.denoiser, None, gen.scaler, guidance_interval=(0.9, 0.2))
    everywhere = _tiny_generator(guidance_interval=[0.0, 1.0])
    middle = _tiny_generator(guidance_interval=[0.4, 0.6])
    labels = torch.tensor([0, 1])
    a = everywhere.sample_latents(labels, steps=4, guidance=3.0, seed=1)
    torch.testing.assert_close(a, gen.sample_latents(labels, steps=4, guidance=3.0, seed=1))
    assert not torch.allclose(a, middle.sample_latents(labels, steps=4, guidance=3.0, seed=1))


def test_choose_guidance_rule():
    rows = {1.0: {"class_consistency": 70, "feature_fd": 0.2}, 3.0: {"class_consistency": 91, "feature_fd": 0.4},
            5.0: {"class_consistency": 95, "feature_fd": 0.3}, 8.0: {"class_consistency": 97, "feature_fd": 0.3}}
    assert image_generation.choose_guidance(rows, 90) == 5.0  # lowest FD among >= 90, ties to the smaller w
    assert image_generation.choose_guidance(rows, 99) == 8.0  # none reaches it: the most consistent
    with pytest.raises(ValueError, match="at least one swept w"):
        image_generation.choose_guidance({}, 90)


def _den_cfg(**kw):
    return config.get_config("catdog", "smoke", den_width=8, den_time_dim=8, den_steps=5, **kw)


def test_latent_denoiser_is_cached_by_its_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = _den_cfg(den_flip=False)
    z, y = torch.randn(16, 4, 8, 8), torch.tensor([0, 1] * 8)
    m1, h1 = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    m2, h2 = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    assert len(list(tmp_path.glob("catdog_latent_denoiser-*.safetensors"))) == 1
    assert h2["loss"] == pytest.approx(h1["loss"])
    torch.testing.assert_close(m1.state_dict(), m2.state_dict(), rtol=0, atol=0)
    image_generation.build_or_load_latent_denoiser(cfg, z, y, "otherkey")  # another autoencoder
    assert len(list(tmp_path.glob("catdog_latent_denoiser-*.safetensors"))) == 2
    # codes of another shape under the same settings: the file is not trusted, it is rebuilt
    capsys.readouterr()
    m3, _ = image_generation.build_or_load_latent_denoiser(cfg, z[:, :2], y, "aekey")
    assert "expected codes of shape [2, 8, 8], found [4, 8, 8]" in capsys.readouterr().out
    assert m3.in_channels == 2


def test_den_flip_needs_mirrored_codes_and_is_its_own_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = _den_cfg(den_flip=True)
    z, y = torch.randn(16, 4, 8, 8), torch.tensor([0, 1] * 8)
    with pytest.raises(ValueError, match=r"den_flip needs z_std_mirrored of shape \(16, 4, 8, 8\); found None"):
        image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    with pytest.raises(ValueError, match=r"found \(8, 4, 8, 8\)"):
        image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey", z_std_mirrored=z[:8])
    _, h_flip = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey", z_std_mirrored=z.flip(-1))
    cfg.den_flip = False
    _, h_plain = image_generation.build_or_load_latent_denoiser(cfg, z, y, "aekey")
    assert len(list(tmp_path.glob("catdog_latent_denoiser-*.safetensors"))) == 2
    assert h_flip["loss"] != pytest.approx(h_plain["loss"])
