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

def test_vae_shapes_and_loss_falls():
    x = (torch.rand(256, 1, 28, 28) > 0.7).to(torch.uint8) * 255
    y = torch.randint(0, 10, (256,))
    model, hist = digit_models.train_vae(x, latent_dim=4, channels=(4, 8), epochs=6, batch_size=64, lr=3e-3,
                                         y_train=y, w_cls=1.0)
    assert model.head is not None and model.head.out_features == 10
    z = digit_models.encode_all(model, x[:10])
    assert z.shape == (10, 4)
    assert digit_models.decode_all(model, z).shape == (10, 1, 28, 28)
    assert hist["loss"][-1] < hist["loss"][0]
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 28, 28\); got \(2, 3, 28, 28\)"):
        digit_models.encode_all(model, torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expected codes of shape \(N, 4\); got \(2, 5\)"):
        digit_models.decode_all(model, torch.zeros(2, 5))


def test_generator_sizes_grow_and_errors():
    counts = [digit_models.count_parameters(digit_models.make_generator(16, s)) for s in digit_models.GENERATOR_SIZES]
    assert counts == sorted(counts) and counts[0] < 8000 and counts[-1] <= 100_000
    with pytest.raises(ValueError, match="unknown generator size 'huge'"):
        digit_models.make_generator(16, "huge")


def test_split_train_val_disjoint_and_errors():
    x, y = torch.arange(100).reshape(100, 1), torch.arange(100)
    xt, yt, xv, yv = digit_models.split_train_val(x, y, 20, n_train=50)
    assert len(xv) == 20 and len(xt) == 50 and not set(yt.tolist()) & set(yv.tolist())
    with pytest.raises(ValueError, match="val_size must be between 1 and 99; got 100"):
        digit_models.split_train_val(x, y, 100)


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
    ll, _ = likelihood.flow_class_loglik(model, x, n_classes=3, steps=16, exact=True)
    assert likelihood.accuracy(likelihood.bayes_predict(ll), y) > 95
    means, covs = likelihood.fit_gaussians(x, y, 3)
    assert likelihood.accuracy(likelihood.gaussian_log_likelihood(x, means, covs).argmax(1), y) > 95
    with pytest.raises(ValueError, match="kind='ddpm' needs the noise schedule"):
        likelihood.denoising_scores(model, "ddpm", x, 3)


def test_confusion_matrix_counts():
    cm = likelihood.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert math.isclose(likelihood.accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])), 75.0)


def test_latent_class_fd_prefers_the_right_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat_interleave(200)
    z_ref = torch.randn(400, 3, generator=g) + 3 * y[:, None]
    good = torch.randn(400, 3, generator=g) + 3 * y[:, None]
    swapped = torch.randn(400, 3, generator=g) + 3 * (1 - y)[:, None]
    assert digit_eval.latent_class_fd(good, y, z_ref, y) < digit_eval.latent_class_fd(swapped, y, z_ref, y)


def test_choose_guidance_rule_fd_among_selector_passing_weights():
    g = torch.Generator().manual_seed(0)
    y_val = torch.arange(2).repeat_interleave(100)
    z_val = torch.randn(200, 2, generator=g) + 4 * y_val[:, None]

    def sample_fn(labels, w):
        # w = 1: the right spread but 2 % of the codes in the wrong class; larger w: pure but narrower
        wrong = (torch.arange(len(labels)) % 50 == 0) & (w == 1.0)
        c = torch.where(wrong, 1 - labels, labels)
        return torch.randn(len(labels), 2, generator=g) / w + 4 * c[:, None]

    selector = lambda z: (z.mean(1) > 2).long()  # noqa: E731
    w_fd, table = digit_eval.choose_guidance(sample_fn, [1.0, 2.0, 4.0], z_val, y_val, 100, n_classes=2)
    w_sel, _ = digit_eval.choose_guidance(sample_fn, [1.0, 2.0, 4.0], z_val, y_val, 100, n_classes=2,
                                          selector=selector, target=99.0)
    assert table[1.0]["latent_fd"] < table[4.0]["latent_fd"]
    assert w_fd == 1.0 and w_sel == 2.0
