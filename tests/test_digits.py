"""Notebook 06: flow matching in helpers.diffusion, the tiny digit VAE and generators, Bayes-rule estimators."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import artifacts, diffusion, digit_eval, digit_models, likelihood
from helpers.denoisers import MLPDenoiser


# --------------------------------------------------------------------------- flow matching

def test_flow_interpolate_ends_and_rank_generic():
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(diffusion.flow_interpolate(x0, torch.zeros(3), eps), x0)
    assert torch.equal(diffusion.flow_interpolate(x0, torch.ones(3), eps), eps)
    mid = diffusion.flow_interpolate(x0, torch.full((3,), 0.25), eps)
    assert torch.allclose(mid, 0.75 * x0 + 0.25 * eps)


def test_logit_normal_t_in_unit_interval_and_seeded():
    a = diffusion.logit_normal_t(1000, torch.Generator().manual_seed(0))
    b = diffusion.logit_normal_t(1000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and (a > 0).all() and (a < 1).all()
    assert abs(a.mean().item() - 0.5) < 0.03  # symmetric around 1/2 for mean 0


class _Exact(torch.nn.Module):
    """The exact velocity field for data concentrated at the point ``mu``: v = (x_t - mu) / t."""

    def __init__(self, mu):
        super().__init__()
        self.mu = torch.nn.Parameter(mu, requires_grad=False)

    def forward(self, x, t, cond=None, drop_cond=None):
        t = (t / diffusion.FLOW_TIME_SCALE).reshape(-1, *([1] * (x.ndim - 1))).clamp(min=1e-3)
        return (x - self.mu) / t


class _Linear(torch.nn.Module):
    """v(x, t) = x: the ODE dx/dt = x, run from t = 1 to 0, ends at x_1 / e."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x, t, cond=None, drop_cond=None):
        return x


def test_heun_is_second_order_euler_first():
    x1 = torch.randn(4, 2, 3, 3)  # rank-generic: image-shaped latents
    exact = x1 / math.e
    err = {m: {n: (diffusion.flow_sample(_Linear(), x1.shape, n, m, noise=x1) - exact).abs().max().item()
               for n in (5, 10)} for m in ("euler", "heun")}
    # (1 - h)^N and (1 - h + h^2/2)^N against e^{-1}: halving h halves Euler's error, quarters Heun's
    assert 1.7 < err["euler"][5] / err["euler"][10] < 2.3
    assert 3.4 < err["heun"][5] / err["heun"][10] < 4.6
    assert err["heun"][10] < err["euler"][10] / 10


def test_flow_sample_with_exact_velocity_reaches_the_data():
    mu = torch.tensor([2.0, -1.0, 0.5])
    out, traj = diffusion.flow_sample(_Exact(mu), (5, 3), steps=4, method="euler",
                                      generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert torch.allclose(out, mu.expand(5, 3), atol=1e-3)
    assert len(traj) == 5 and traj[0]["t"] == 1.0 and traj[-1]["t"] == -1
    # the first x0 prediction x_1 - 1 * v already points at mu
    assert torch.allclose(traj[0]["x0_pred"], mu.expand(5, 3), atol=1e-4)


def test_flow_sampler_errors():
    m = _Exact(torch.zeros(2))
    with pytest.raises(ValueError, match="unknown flow sampler 'rk4'"):
        diffusion.flow_sample(m, (2, 2), 3, method="rk4")
    with pytest.raises(ValueError, match="steps >= 1; got steps=0"):
        diffusion.flow_timesteps(0)
    with pytest.raises(ValueError, match="expected 'logit_normal' or 'uniform'"):
        diffusion.flow_matching_loss(m, torch.zeros(2, 2), t_sampling="beta")


def test_train_flow_loss_falls_and_guided_samples_separate_classes():
    torch.manual_seed(0)
    y = torch.arange(2).repeat(256)
    x = torch.where(y[:, None] == 0, torch.tensor([2.0, 2.0]), torch.tensor([-2.0, -2.0])) + 0.1 * torch.randn(512, 2)
    model = MLPDenoiser(2, 32, 1, 16, cond_kind="class", n_classes=2)
    ema, hist = diffusion.train_flow(model, x, 400, 128, 3e-3, cond=y, p_uncond=0.1, progress=False,
                                     generator=torch.Generator().manual_seed(0), ema_decay=0.99)
    assert sum(hist["loss"][-50:]) / 50 < 0.6 * sum(hist["loss"][:20]) / 20
    s = diffusion.flow_sample(ema, (64, 2), 10, "heun", cond=torch.zeros(64, dtype=torch.long), guidance=2.0,
                              generator=torch.Generator().manual_seed(1))
    assert (s.mean(1) > 0).float().mean() > 0.9


def test_train_diffusion_default_objective_unchanged():
    """The loss_fn hook must not change the DDPM trainer: the same seed gives the same losses."""
    sched = diffusion.NoiseSchedule.make("linear", 50)
    x = torch.randn(64, 3)

    def run(**kw):
        torch.manual_seed(0)
        m = MLPDenoiser(3, 16, 1, 8)
        _, h = diffusion.train_diffusion(m, x, sched, 5, 16, 1e-3, progress=False,
                                         generator=torch.Generator().manual_seed(0), **kw)
        return h["loss"]

    explicit = lambda m, x0, c, p, g: diffusion.diffusion_loss(m, sched, x0, c, p_uncond=p, generator=g)  # noqa: E731
    assert run() == run(loss_fn=explicit)


# --------------------------------------------------------------------------- VAE and generators

DIGITS = {"seed": 0, "vae_latent": 4, "vae_channels": [4, 8], "vae_epochs": 6, "vae_batch_size": 64, "vae_lr": 3e-3,
          "vae_beta": 0.5, "vae_w_cls": 1.0, "n_train": None, "val_size": 10}


def test_vae_shapes_loss_falls_and_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    x = (torch.rand(256, 1, 28, 28) > 0.7).to(torch.uint8) * 255
    y = torch.randint(0, 10, (256,))
    model, hist = digit_models.build_or_load_vae(DIGITS, x, y, "mnist")
    assert model.head is not None and model.head.out_features == 10
    assert len(hist["loss"]) == 6 * 4 and hist["loss"][-1] < hist["loss"][0]
    z = digit_models.encode_all(model, x[:10])
    assert z.shape == (10, 4)
    assert digit_models.decode_all(model, z).shape == (10, 1, 28, 28)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 28, 28\); got \(2, 3, 28, 28\)"):
        digit_models.encode_all(model, torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expected codes of shape \(N, 4\); got \(2, 5\)"):
        digit_models.decode_all(model, torch.zeros(2, 5))
    # loaded from the cache: the same weights and loss curve, frozen
    again, hist2 = digit_models.build_or_load_vae(DIGITS, x, y, "mnist")
    assert hist2["loss"] == pytest.approx(hist["loss"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not any(p.requires_grad for p in again.parameters())
    # the key is the training settings: another KL weight is another file
    assert digit_models.vae_key(DIGITS, "mnist") != digit_models.vae_key({**DIGITS, "vae_beta": 1.0}, "mnist")
    assert digit_models.vae_key(DIGITS, "mnist") != digit_models.vae_key(DIGITS, "fashion_mnist")


def test_vae_loss_is_the_negative_elbo():
    torch.manual_seed(0)
    model = digit_models.DigitVAE(4, (4, 8), n_classes=3)
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1])
    loss, rec, kl = digit_models.vae_loss(model, x, 0.5, torch.Generator().manual_seed(1), y, 2.0)
    mu, logvar = model.encode(x)
    # the KL of N(mu, sigma^2) to N(0, I), computed by torch.distributions
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    kl_ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum() / 5
    torch.testing.assert_close(kl, kl_ref)
    ce = torch.nn.functional.cross_entropy(model.head(mu), y)
    torch.testing.assert_close(loss, rec + 0.5 * kl + 2.0 * ce)


def test_generator_sizes_grow_and_errors():
    counts = [sum(p.numel() for p in digit_models.make_generator(16, s).parameters()) for s in digit_models.GENERATOR_SIZES]
    assert counts == sorted(counts) and counts[0] < 8000 and counts[-1] <= 100_000
    with pytest.raises(ValueError, match="unknown generator size 'huge'"):
        digit_models.make_generator(16, "huge")


def test_generator_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = {"seed": 0, "gen_steps": 5, "gen_batch_size": 16, "gen_lr": 1e-3, "gen_ema": 0.9, "gen_p_uncond": 0.1,
           "T": 50, "schedule": "linear"}
    z, y = torch.randn(64, 16), torch.randint(0, 10, (64,))
    a, ha = digit_models.build_or_load_generator(cfg, "flow", "tiny", z, y, "vae0")
    b, hb = digit_models.build_or_load_generator(cfg, "flow", "tiny", z, y, "vae0")
    assert ha["loss"] == pytest.approx(hb["loss"])
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="unknown generator kind 'gan'"):
        digit_models.build_or_load_generator(cfg, "gan", "tiny", z, y, "vae0")
    # a file of another kind under that name is refused and rebuilt (the same seed: the same weights)
    path = next(tmp_path.glob("digit_flow_tiny-*.safetensors"))
    artifacts.save_tensors(path, {"x": torch.zeros(1)}, {"kind": "digit_vae"})
    c, _ = digit_models.build_or_load_generator(cfg, "flow", "tiny", z, y, "vae0")
    assert all(torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


# --------------------------------------------------------------------------- Bayes' rule

class _GaussVelocity(torch.nn.Module):
    """Exact flow velocity for class-conditional data N(mu_y, s^2 I): v(x, t) = E[eps - x0 | x_t]."""

    def __init__(self, mus, s=0.3):
        super().__init__()
        self.mus = torch.nn.Parameter(mus, requires_grad=False)
        self.s = s

    def forward(self, x, t, cond=None, drop_cond=None):
        t = (t / diffusion.FLOW_TIME_SCALE).reshape(-1, 1)
        mu = self.mus[cond]
        # x_t = (1-t) x0 + t eps: mean (1-t) mu, variance (1-t)^2 s^2 + t^2 per dimension
        var = (1 - t) ** 2 * self.s ** 2 + t ** 2
        r = x - (1 - t) * mu
        e_eps = t * r / var                                # E[eps | x_t]
        e_x0 = mu + (1 - t) * self.s ** 2 * r / var        # E[x0 | x_t]
        return e_eps - e_x0


def test_flow_log_likelihood_matches_the_gaussian_density():
    mus = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    model = _GaussVelocity(mus)
    x = torch.tensor([[0.8, -0.7], [0.0, 0.3], [-1.2, 0.9]])
    cond = torch.zeros(3, dtype=torch.long)
    ll, shortcut = likelihood.flow_log_likelihood(model, x, cond, steps=64, exact=True)
    true = torch.distributions.MultivariateNormal(mus[0], 0.09 * torch.eye(2)).log_prob(x)
    assert torch.allclose(ll, true, atol=0.05), (ll, true)
    # Hutchinson is unbiased: many probes approach the exact divergence
    llh, _ = likelihood.flow_log_likelihood(model, x, cond, steps=64, probes=256)
    assert torch.allclose(llh, true, atol=0.3)
    assert (shortcut <= 0).all() and not torch.allclose(shortcut, ll)


def test_bayes_rule_estimators_classify_separated_gaussians():
    mus = torch.tensor([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5]])
    model = _GaussVelocity(mus)
    y = torch.arange(3).repeat(20)
    x = mus[y] + 0.3 * torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    s = likelihood.denoising_scores(model, "flow", x, n_classes=3, n_samples=8)
    assert s.shape == (60, 3) and likelihood.accuracy(s.argmax(1), y) > 95
    ll = torch.stack([likelihood.flow_log_likelihood(model, x, torch.full((60,), c), steps=16, exact=True)[0]
                      for c in range(3)], 1)
    assert likelihood.accuracy(likelihood.bayes_predict(ll), y) > 95
    # a prior that all but rules a class out moves the decisions away from it
    prior = torch.tensor([-1000.0, math.log(0.5), math.log(0.5)])
    assert (likelihood.bayes_predict(ll, prior) != 0).all()
    with pytest.raises(ValueError, match="kind='ddpm' needs the noise schedule"):
        likelihood.denoising_scores(model, "ddpm", x, 3)
    with pytest.raises(ValueError, match=r"expected flat codes \(B, d\); got shape \(2, 1, 2\)"):
        likelihood.flow_log_likelihood(model, x[:2, None], y[:2])


def test_denoising_scores_are_seeded():
    model = _GaussVelocity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(3))
    one = likelihood.denoising_scores(model, "flow", x, 2, 4, seed=0)
    assert torch.equal(one, likelihood.denoising_scores(model, "flow", x, 2, 4, seed=0))
    assert not torch.equal(one, likelihood.denoising_scores(model, "flow", x, 2, 4, seed=1))


def test_sample_latents_errors_and_determinism():
    gen = digit_models.make_generator(4, "tiny", 3)
    a = digit_models.sample_latents(gen, "flow", torch.tensor([0, 1]), 4, steps=2, guidance=2.0, seed=5)
    b = digit_models.sample_latents(gen, "flow", torch.tensor([0, 1]), 4, steps=2, guidance=2.0, seed=5)
    assert a.shape == (2, 4) and torch.equal(a, b)
    with pytest.raises(ValueError, match="expected kind 'flow', or 'ddpm' with a noise schedule; got 'ddpm' without"):
        digit_models.sample_latents(gen, "ddpm", torch.tensor([0]), 4)
    with pytest.raises(ValueError, match="got 'gan' with a schedule"):
        digit_models.sample_latents(gen, "gan", torch.tensor([0]), 4, sched=diffusion.NoiseSchedule.make("linear", 10))


def test_confusion_matrix_counts():
    cm = likelihood.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert math.isclose(likelihood.accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])), 75.0)


def test_cnn_cache_features_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = {"seed": 0, "n_train": None, "val_size": 4, "judge_spec": {"channels": [4, 8], "hidden": [8]},
           "judge_epochs": 1, "judge_shift": 1}
    x, y = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), torch.arange(64) % 10
    judge, n = digit_eval.build_or_load_cnn(cfg, "judge", "mnist", x, y)
    assert n == sum(p.numel() for p in judge.parameters())
    probs, feats = digit_eval.cnn_features(judge, x[:5], "mnist")
    assert probs.shape == (5, 10) and feats.shape == (5, 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    # uint8 and [0, 1] float images are the same input
    torch.testing.assert_close(digit_eval.cnn_features(judge, x[:5].float() / 255, "mnist")[0], probs)
    again, _ = digit_eval.build_or_load_cnn(cfg, "judge", "mnist", x, y)
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), again.state_dict().values()))
    verdict = digit_eval.judge(judge, x[:5], probs.argmax(1), "mnist")
    assert verdict == {"class_consistency": 100.0}
    with pytest.raises(ValueError, match="unknown CNN role 'critic': expected 'judge' or 'cnn'"):
        digit_eval.build_or_load_cnn(cfg, "critic", "mnist", x, y)


def test_a_diverging_vae_learning_rate_stops_before_anything_is_saved():
    from helpers import config, runtime
    cfg = dict(config.get_config("digits", "smoke"), vae_lr=1e6, vae_epochs=1)
    x = torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (512,))
    with pytest.raises(runtime.DivergenceError, match=r"digit VAE diverged at step \d+.*vae_lr=1000000"):
        digit_models.build_or_load_vae(cfg, x, y, "mnist")
    assert not config.artifacts_dir().exists() or not any(config.artifacts_dir().rglob("*digit_vae*"))
