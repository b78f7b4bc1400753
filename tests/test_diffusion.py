"""Tests of helpers.diffusion: schedules, forward process, samplers, guidance, EMA, trainer."""

import pytest
import torch
from torch import nn

from helpers import diffusion as D, runtime
from helpers.denoisers import MLPDenoiser


def test_extract_shapes_2d_and_4d():
    a = torch.arange(10, dtype=torch.float32)
    t = torch.tensor([0, 3, 9])
    out2 = D.extract(a, t, (3, 7))
    out4 = D.extract(a, t, (3, 2, 4, 4))
    assert out2.shape == (3, 1) and out4.shape == (3, 1, 1, 1)
    assert out2.flatten().tolist() == [0.0, 3.0, 9.0]
    assert torch.equal(out4.flatten(), out2.flatten())


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [50, 500, 1000])
def test_schedule_properties(name, T):
    s = D.NoiseSchedule.make(name, T)
    ab = s.alphas_cumprod
    assert s.T == T and ab.shape == (T,)
    assert torch.all(ab > 0) and torch.all(ab < 1)
    assert torch.all(ab[1:] < ab[:-1])  # strictly decreasing
    assert ab[-1] < 0.01  # ends in (almost) pure noise
    assert ab[0] > 0.99   # starts (almost) clean
    assert torch.allclose(s.sqrt_alphas_cumprod ** 2 + s.sqrt_one_minus_alphas_cumprod ** 2,
                          torch.ones(T), atol=1e-6)


def test_linear_schedule_is_ho_at_1000():
    s = D.NoiseSchedule.make("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(2e-2)
    with pytest.raises(ValueError, match="unknown schedule"):
        D.NoiseSchedule.make("quadratic", 10)


def test_q_sample_statistics():
    s = D.NoiseSchedule.make("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 2), 3.0)
    t = torch.full((20000,), 40)
    xt = D.q_sample(s, x0, t, torch.randn(x0.shape, generator=g))
    ab = s.alphas_cumprod[40]
    assert xt.mean().item() == pytest.approx(3.0 * ab.sqrt().item(), abs=0.03)
    assert xt.var().item() == pytest.approx((1 - ab).item(), rel=0.05)
    # t = 0 barely changes x0
    x_first = D.q_sample(s, x0, torch.zeros(20000, dtype=torch.long), torch.zeros_like(x0))
    assert torch.allclose(x_first, x0 * s.sqrt_alphas_cumprod[0])


class OracleEps(nn.Module):
    """Knows the single clean point x0: returns the exact noise of x_t = sqrt(ab) x0 + sqrt(1-ab) eps."""

    def __init__(self, sched, x0):
        super().__init__()
        self.sched, self.x0 = sched, x0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, t, cond=None, drop_cond=None):
        a = D.extract(self.sched.sqrt_alphas_cumprod, t, x.shape)
        b = D.extract(self.sched.sqrt_one_minus_alphas_cumprod, t, x.shape)
        return (x - a * self.x0) / b


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_with_perfect_eps_recovers_x0(steps):
    s = D.NoiseSchedule.make("cosine", 200)
    x0 = torch.tensor([[1.5, -2.0, 0.25, 4.0]])
    out = D.ddim_sample(OracleEps(s, x0), s, (5, 4), steps=steps, eta=0.0,
                        generator=torch.Generator().manual_seed(1))
    # float32: at the cosine schedule's last step sqrt(abar) ~ 5e-5 amplifies rounding
    assert torch.allclose(out, x0.expand(5, 4), atol=1e-3)


def test_ddpm_with_perfect_eps_recovers_x0_and_trajectory():
    s = D.NoiseSchedule.make("linear", 50)
    x0 = torch.tensor([[0.5, -1.0]])
    out, traj = D.ddpm_sample(OracleEps(s, x0), s, (3, 2), generator=torch.Generator().manual_seed(0),
                              return_trajectory=True)
    assert torch.allclose(out, x0.expand(3, 2), atol=1e-3)
    assert len(traj) == 51 and traj[-1]["t"] == -1 and traj[0]["t"] == 49


def test_ddim_trajectory_format():
    s = D.NoiseSchedule.make("linear", 100)
    model = MLPDenoiser(3, hidden=16, n_blocks=1, time_dim=8)
    out, traj = D.ddim_sample(model, s, (4, 3), steps=10, generator=torch.Generator().manual_seed(0),
                              return_trajectory=True)
    assert len(traj) == 11
    assert [e["t"] for e in traj[:-1]] == D.ddim_timesteps(100, 10)
    assert traj[0]["t"] == 99 and traj[-2]["t"] == 0 and traj[-1]["t"] == -1
    assert torch.equal(traj[-1]["x_t"], out)
    assert all(e["x_t"].shape == (4, 3) and e["x0_pred"].shape == (4, 3) for e in traj)


def _small_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = MLPDenoiser(6, hidden=32, n_blocks=2, time_dim=16, **kw)
    # give the zero-initialised output layer some weights so outputs depend on inputs
    nn.init.normal_(m.out.weight, std=0.1)
    return m.eval()


def test_determinism_same_seed_and_same_noise():
    s = D.NoiseSchedule.make("linear", 100)
    m = _small_model()
    a = D.ddim_sample(m, s, (8, 6), steps=20, eta=0.0, generator=torch.Generator().manual_seed(3))
    b = D.ddim_sample(m, s, (8, 6), steps=20, eta=0.0, generator=torch.Generator().manual_seed(3))
    c = D.ddim_sample(m, s, (8, 6), steps=20, eta=0.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # eta = 0: the same starting noise maps to the same sample, whatever the generator
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(9))
    d = D.ddim_sample(m, s, (8, 6), steps=20, noise=noise, generator=torch.Generator().manual_seed(1))
    e = D.ddim_sample(m, s, (8, 6), steps=20, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(d, e)
    # eta > 0: same seed is still reproducible, different generators differ
    f1 = D.ddim_sample(m, s, (8, 6), steps=20, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(1))
    f2 = D.ddim_sample(m, s, (8, 6), steps=20, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(1))
    f3 = D.ddim_sample(m, s, (8, 6), steps=20, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(f1, f2) and not torch.allclose(f1, f3)
    g1 = D.ddpm_sample(m, s, (4, 6), generator=torch.Generator().manual_seed(5))
    g2 = D.ddpm_sample(m, s, (4, 6), generator=torch.Generator().manual_seed(5))
    assert torch.equal(g1, g2)


def test_ddim_timesteps():
    assert D.ddim_timesteps(500, 50)[0] == 499 and D.ddim_timesteps(500, 50)[-1] == 0
    assert len(D.ddim_timesteps(500, 50)) == 50
    assert D.ddim_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        D.ddim_timesteps(10, 11)


@pytest.mark.parametrize("kind", ["scalar", "class"])
def test_cfg_w1_equals_conditional_and_w0_unconditional(kind):
    m = _small_model(cond_kind=kind, n_classes=3 if kind == "class" else None)
    # make the null embedding differ from a real condition
    for p in m.parameters():
        if p.ndim == 1 and p.shape[0] == 32:
            nn.init.normal_(p, std=0.5)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 20, 30, 40])
    c = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0]) if kind == "scalar" else torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        cond_call = m(x, t, cond=c)
        uncond_call = m(x, t, cond=None)
        w1 = D.guided_eps(m, x, t, c, guidance=1.0)
        w0 = D.guided_eps(m, x, t, c, guidance=0.0)
        w3 = D.guided_eps(m, x, t, c, guidance=3.0)
    assert torch.allclose(w1, cond_call, atol=1e-6)
    assert torch.allclose(w0, uncond_call, atol=1e-5)
    assert torch.allclose(w3, uncond_call + 3 * (cond_call - uncond_call), atol=1e-5)
    assert not torch.allclose(cond_call, uncond_call)


def test_update_ema_math():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    D.update_ema(a, b, decay=0.9)
    for p_new, p_old, p_src in zip(a.parameters(), before, b.parameters()):
        assert torch.allclose(p_new, 0.9 * p_old + 0.1 * p_src)
    D.update_ema(a, b, decay=0.0)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_ema_decay_at_warmup_binds_for_thousands_of_steps():
    # the warm-up (1 + k) / (10 + k), not the configured decay, sets a 5,000-step run's EMA
    assert D.ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert D.ema_decay_at(0.999, 4999) == pytest.approx(5000 / 5009)
    assert D.ema_decay_at(0.9995, 4999) == D.ema_decay_at(0.999, 4999) < 0.999
    assert D.ema_decay_at(0.999, 20000) == 0.999
    with pytest.raises(ValueError, match="step must be >= 0"):
        D.ema_decay_at(0.999, -1)


def test_train_diffusion_ema_follows_ema_decay_at():
    # one step: the EMA moves by (1 - d_0) = 0.9 of the way to the trained weights
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    start = [p.detach().clone() for p in model.parameters()]

    def loss_fn(m, x0, c, p, g):
        return (m(x0) ** 2).mean()

    ema, _ = D.train_diffusion(model, torch.randn(32, 4), None, steps=1, batch_size=8, lr=1e-2, ema_decay=0.999,
                               loss_fn=loss_fn, progress=False)
    d = D.ema_decay_at(0.999, 0)
    for pe, p0, p in zip(ema.parameters(), start, model.parameters()):
        assert not torch.equal(p, p0)
        assert torch.allclose(pe, d * p0 + (1 - d) * p, atol=1e-7)


def test_training_loss_falls_and_samples_move_to_data():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # toy data: two clusters in 4-D
    centers = torch.tensor([[2.0, 2.0, 0.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    data = centers[torch.randint(0, 2, (512,), generator=g)] + 0.1 * torch.randn(512, 4, generator=g)
    s = D.NoiseSchedule.make("linear", 100)
    model = MLPDenoiser(4, hidden=32, n_blocks=1, time_dim=16)
    ema, hist = D.train_diffusion(model, data, s, steps=250, batch_size=64, lr=3e-3, ema_decay=0.99,
                                  generator=g, progress=False)
    first, last = sum(hist["loss"][:30]) / 30, sum(hist["loss"][-30:]) / 30
    assert last < 0.7 * first
    assert len(hist["loss"]) == 250 and not ema.training
    x = D.ddim_sample(ema, s, (200, 4), steps=20, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(x, centers).min(dim=1).values
    assert dist.median() < 0.6
    # clip_x0 bounds the predicted clean point at every step
    _, traj = D.ddim_sample(ema, s, (50, 4), steps=10, clip_x0=1.0, return_trajectory=True,
                            generator=torch.Generator().manual_seed(1))
    assert all(e["x0_pred"].abs().max() <= 1.0 + 1e-6 for e in traj[:-1])


def test_train_with_condition_and_cfg_dropout_runs():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 6, generator=g)
    labels = torch.randint(0, 2, (64,), generator=g)
    s = D.NoiseSchedule.make("linear", 50)
    model = MLPDenoiser(6, hidden=16, n_blocks=1, time_dim=8, cond_kind="class", n_classes=2)
    calls = []
    ema, hist = D.train_diffusion(model, data, s, steps=5, batch_size=16, lr=1e-3, cond=labels,
                                  p_uncond=0.2, generator=g, progress=False, lr_schedule="cosine",
                                  warmup_steps=2, callback=lambda *a: calls.append(a[0]))
    assert calls == list(range(5))
    out = D.ddim_sample(ema, s, (3, 6), steps=5, cond=torch.tensor([0, 1, 0]), guidance=2.0,
                        generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 6)
    with pytest.raises(ValueError, match="rows"):
        D.train_diffusion(model, data, s, 1, 8, 1e-3, cond=labels[:10], progress=False)


@pytest.mark.parametrize("flow", [False, True])
def test_huge_lr_stops_with_the_step_and_lr_named(flow):
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    model = MLPDenoiser(4, hidden=16, n_blocks=1, time_dim=8)
    kw = dict(steps=50, batch_size=16, lr=1e30, generator=torch.Generator().manual_seed(0), progress=False)
    with pytest.raises(runtime.DivergenceError, match=r"lr=1e\+30") as err:
        if flow:
            D.train_flow(model, data, name="toy flow", **kw)
        else:
            D.train_diffusion(model, data, D.NoiseSchedule.make("linear", 50), **kw)
    assert "at step" in str(err.value) and ("toy flow" if flow else "denoiser") in str(err.value)


def test_samplers_work_on_4d_images():
    s = D.NoiseSchedule.make("linear", 20)
    x0 = torch.randn(1, 2, 3, 3)
    out = D.ddim_sample(OracleEps(s, x0), s, (2, 2, 3, 3), steps=5)
    assert out.shape == (2, 2, 3, 3) and torch.allclose(out, x0.expand(2, 2, 3, 3), atol=1e-4)
    m = MLPDenoiser(18, hidden=16, n_blocks=1, time_dim=8)
    loss = D.diffusion_loss(m, s, torch.randn(4, 2, 3, 3))
    assert loss.ndim == 0


# ---------------------------------------------------------------------------
# x0-prediction: the conversion, the wrapper the samplers see, the loss
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_eps_from_x0_round_trips_with_predict_x0(name):
    s = D.NoiseSchedule.make(name, 100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g)
    t = torch.randint(0, 95, (64,), generator=g)      # the cosine schedule's last steps amplify rounding
    x_t = D.q_sample(s, x0, t, noise)
    # the true clean point gives back the true noise, and the two conversions invert each other
    assert torch.allclose(D.eps_from_x0(s, x_t, t, x0), noise, atol=1e-4)
    guess = torch.randn(64, 5, generator=g)
    assert torch.allclose(D.predict_x0(s, x_t, t, D.eps_from_x0(s, x_t, t, guess)), guess, atol=1e-4)
    assert torch.allclose(D.eps_from_x0(s, x_t, t, D.predict_x0(s, x_t, t, guess)), guess, atol=1e-4)


class OracleX0(nn.Module):
    """Knows the single clean point x0 and says so, whatever x_t: a perfect x0-predictor."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, t, cond=None, drop_cond=None):
        return self.x0.expand(x.shape[0], -1)


def test_eps_from_x0_wrapper_drives_ddim_to_the_clean_point():
    s = D.NoiseSchedule.make("linear", 200)
    x0 = torch.tensor([[1.5, -2.0, 0.25, 4.0]])
    wrapped = D.EpsFromX0(OracleX0(x0), s)
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(3, 4, generator=g), torch.tensor([0, 100, 199])
    assert torch.allclose(wrapped(x_t, t), OracleEps(s, x0)(x_t, t))
    for eta in (0.0, 1.0):
        out = D.ddim_sample(wrapped, s, (5, 4), steps=20, eta=eta, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(out, x0.expand(5, 4), atol=1e-3)


def test_a_few_steps_of_x0_training_lower_the_x0_loss():
    s = D.NoiseSchedule.make("linear", 100)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4, 6, generator=g) * 2.0 + 1.0
    model = _small_model().train()

    def held_out_loss(m):          # the same t, noise and points before and after training
        with torch.no_grad():
            return D.x0_loss(m, s, data.repeat(64, 1), generator=torch.Generator().manual_seed(5)).item()

    before = held_out_loss(model)
    D.train_diffusion(model, data, s, steps=150, batch_size=32, lr=3e-3, generator=g, progress=False,
                      loss_fn=lambda m, x0, c, p, gen: D.x0_loss(m, s, x0, c, p_uncond=p, generator=gen))
    assert held_out_loss(model) < 0.5 * before


# ---------------------------------------------------------------------------
# Guidance interval
# ---------------------------------------------------------------------------

def test_guidance_at_inside_outside_and_bad_intervals():
    assert D.guidance_at(4.0, 0.5) == 4.0                      # no interval: everywhere
    assert D.guidance_at(4.0, 0.5, (0.1, 0.8)) == 4.0
    assert D.guidance_at(4.0, 0.9, (0.1, 0.8)) == 1.0          # outside: the conditional model
    assert D.guidance_at(4.0, 0.05, [0.1, 0.8]) == 1.0
    assert D.guidance_at(4.0, 0.8, (0.1, 0.8)) == 4.0          # the ends belong to the interval
    with pytest.raises(ValueError, match=r"0 <= lo < hi <= 1; got \(0.8, 0.1\)"):
        D.guidance_at(4.0, 0.5, (0.8, 0.1))
    with pytest.raises(ValueError, match=r"0 <= lo < hi <= 1; got \(0.0, 1.5\)"):
        D.check_guidance_interval([0, 1.5])
    with pytest.raises(ValueError, match="two numbers"):
        D.check_guidance_interval([0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="two numbers"):
        D.check_guidance_interval(0.5)


def _class_model(dim=6, seed=0):
    torch.manual_seed(seed)
    m = MLPDenoiser(dim, hidden=16, n_blocks=1, time_dim=8, cond_kind="class", n_classes=2)
    with torch.no_grad():                      # a random net whose class embedding matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("sampler", ["flow", "ddim"])
def test_guidance_interval_selects_the_guided_steps(sampler):
    model, s = _class_model(), D.NoiseSchedule.make("cosine", 50)
    cond, noise = torch.tensor([0, 1, 0, 1]), torch.randn(4, 6, generator=torch.Generator().manual_seed(1))

    def run(w, interval):
        if sampler == "flow":
            return D.flow_sample(model, (4, 6), steps=5, cond=cond, guidance=w, noise=noise,
                                 guidance_interval=interval)
        return D.ddim_sample(model, s, (4, 6), steps=5, cond=cond, guidance=w, noise=noise,
                             guidance_interval=interval)

    guided, plain = run(3.0, None), run(1.0, None)
    assert not torch.allclose(guided, plain)
    assert torch.equal(run(3.0, (0.0, 1.0)), guided)           # an interval over every step = no interval
    # flow evaluates t = 1, .8, .6, .4, .2; DDIM t/T = .98, .74, .48, .24, 0: none inside (0.85, 0.9)
    assert torch.equal(run(3.0, (0.85, 0.9)), plain)           # no step inside: plain conditional sampling
    part = run(3.0, (0.1, 0.7))
    assert not torch.allclose(part, guided) and not torch.allclose(part, plain)
    with pytest.raises(ValueError, match="lo < hi"):
        run(3.0, (0.7, 0.1))


def test_samplers_build_no_autograd_graph():
    # sampling is inference: a sample that required grad breaks .numpy() downstream (notebook 05)
    model, s = _class_model(), D.NoiseSchedule.make("cosine", 50)
    assert any(p.requires_grad for p in model.parameters())
    cond = torch.tensor([0, 1])
    for interval in (None, (0.1, 0.8)):
        a = D.ddim_sample(model, s, (2, 6), steps=3, cond=cond, guidance=2.0, guidance_interval=interval,
                          generator=torch.Generator().manual_seed(0))
        b = D.flow_sample(model, (2, 6), steps=3, cond=cond, guidance=2.0, guidance_interval=interval,
                          generator=torch.Generator().manual_seed(0))
        assert not a.requires_grad and a.grad_fn is None
        assert not b.requires_grad and b.grad_fn is None
