r"""Denoising diffusion and flow matching, the shared core of notebooks 03 (which writes each piece from
scratch and checks it against this module), 04 and 06.

Denoisers are called as ``model(x_t, t, cond=None, drop_cond=None)``: ``t`` (B,) steps in ``[0, T)`` (flow
models get :math:`1000\,t`); ``cond=None`` is unconditional; ``drop_cond`` (B,) bool rows use the null
condition. Everything is rank-generic: weight latents ``(B, d)``, image latents ``(B, C, H, W)``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .runtime import check_finite as _check_finite, device_of as _device_of, progress as _progress


# --- Schedules and the forward process ---
def extract(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    """``a[t]`` per batch row, shaped ``(B, 1, ..., 1)`` to broadcast against ``x_shape``."""
    t = torch.as_tensor(t, device=a.device).long()
    if t.ndim == 0:
        t = t.expand(x_shape[0])
    return a.gather(0, t).reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


@dataclass
class NoiseSchedule:
    r"""The per-step tables (float32, (T,), ``t`` in ``0..T-1``): :math:`\beta_t, \alpha_t, \bar\alpha_t,
    \bar\alpha_{t-1}`, square roots and the posterior variance :math:`\tilde\beta_t`."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    name: str = "custom"

    @classmethod
    def from_betas(cls, betas: torch.Tensor, name: str = "custom") -> "NoiseSchedule":
        betas = torch.as_tensor(betas, dtype=torch.float64)
        # \alpha_t = 1 - \beta_t
        alphas = 1.0 - betas
        # \bar\alpha_t = \prod_{s \le t} \alpha_s
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        # \bar\alpha_{t-1}, with \bar\alpha_0 = 1 (no noise before the first step)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # \tilde\beta_t = (1 - \bar\alpha_{t-1}) / (1 - \bar\alpha_t) \beta_t   (Ho et al. 2020, eq. 7)
        posterior_variance = (1 - alphas_cumprod_prev) / (1 - alphas_cumprod) * betas
        f32 = lambda x: x.to(torch.float32)  # noqa: E731  (tables are computed in float64)
        return cls(betas=f32(betas), alphas=f32(alphas), alphas_cumprod=f32(alphas_cumprod),
                   alphas_cumprod_prev=f32(alphas_cumprod_prev),
                   sqrt_alphas_cumprod=f32(alphas_cumprod.sqrt()),
                   sqrt_one_minus_alphas_cumprod=f32((1 - alphas_cumprod).sqrt()),
                   posterior_variance=f32(posterior_variance), name=name)

    @classmethod
    def make(cls, name: str, T: int) -> "NoiseSchedule":
        """``"linear"`` (Ho et al.'s β range times 1000/T, ending in noise) or ``"cosine"``, with ``T`` steps."""
        if T < 2:
            raise ValueError(f"a schedule needs at least 2 steps; got T={T}")
        if name == "linear":
            # Ho et al. 2020: \beta_t evenly spaced from 1e-4 to 2e-2 at T = 1000
            scale = 1000.0 / T
            return cls.from_betas(torch.linspace(1e-4 * scale, min(2e-2 * scale, 0.999), T, dtype=torch.float64), name)
        if name == "cosine":
            # Nichol & Dhariwal 2021, eq. 17: f(t) = cos^2((t/T + s)/(1 + s) pi/2), \bar\alpha_t = f(t)/f(0), s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2) ** 2
            ac = f / f[0]
            # \beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}, at most 0.999
            return cls.from_betas((1 - ac[1:] / ac[:-1]).clamp(max=0.999), name)
        raise ValueError(f"unknown schedule {name!r}: expected 'linear' or 'cosine'")

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    def to(self, device) -> "NoiseSchedule":
        return NoiseSchedule(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})


def _randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU generator (reproducible), moved to ``device``."""
    return torch.randn(tuple(shape), generator=generator).to(device)


def q_sample(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""Jump from :math:`x_0` to step :math:`t` in one go (Ho et al. 2020, eq. 4)."""
    # x_t = \sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t} \epsilon
    return (extract(sched.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def predict_x0(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""Invert :func:`q_sample` with a noise estimate."""
    # \hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t} \hat\epsilon) / \sqrt{\bar\alpha_t}
    return ((x_t - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * eps)
            / extract(sched.sqrt_alphas_cumprod, t, x_t.shape))


def eps_from_x0(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    r"""The noise estimate that goes with a clean-point estimate (the inverse of :func:`predict_x0`)."""
    # \hat\epsilon = (x_t - \sqrt{\bar\alpha_t} \hat x_0) / \sqrt{1 - \bar\alpha_t}
    return ((x_t - extract(sched.sqrt_alphas_cumprod, t, x_t.shape) * x0)
            / extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape))


class EpsFromX0(nn.Module):
    r"""An :math:`\hat x_0`-network (:func:`x0_loss`) seen by the samplers as a noise predictor."""

    def __init__(self, x0_model: nn.Module, sched: NoiseSchedule):
        super().__init__()
        self.x0_model, self.sched = x0_model, sched
        self.dim = getattr(x0_model, "dim", None)
        self.train(x0_model.training)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, drop_cond=None) -> torch.Tensor:
        x0 = self.x0_model(x_t, t, cond=cond, drop_cond=drop_cond)
        return eps_from_x0(self.sched.to(x_t.device), x_t, t, x0)


# --- Guidance and the training losses ---
def guided_eps(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond=None,
               guidance: float = 1.0) -> torch.Tensor:
    r"""Noise estimate with classifier-free guidance from one batched call (``w = 1``: plain conditional)."""
    B = x_t.shape[0]
    if cond is None:
        return model(x_t, t, cond=None)
    cond = torch.as_tensor(cond)
    cond = (cond.expand(B) if cond.ndim == 0 else cond).to(x_t.device)
    if guidance == 1.0:
        return model(x_t, t, cond=cond)
    # one call on [x_t; x_t]: first half with the condition, second half with the null condition
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x_t.device)
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=torch.cat([cond, cond]), drop_cond=drop)
    eps_cond, eps_uncond = eps[:B], eps[B:]
    # \tilde\epsilon = \epsilon(x_t, \varnothing) + w (\epsilon(x_t, c) - \epsilon(x_t, \varnothing))
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def _drop_mask(cond, p_uncond: float, B: int, generator, device) -> torch.Tensor | None:
    """The rows (B,) whose condition is replaced by the null condition (None: no dropping)."""
    if cond is None or p_uncond <= 0:
        return None
    return (torch.rand(B, generator=generator) < p_uncond).to(device)


def _training_draws(sched: NoiseSchedule, x0: torch.Tensor, cond, p_uncond: float,
                    generator: torch.Generator | None):
    """The draws of one minibatch, in this order: steps t, noise, dropped conditions -> ``(x_t, t, noise, drop)``."""
    B, device = x0.shape[0], x0.device
    # Algorithm 1, line 3: t ~ Uniform({1, ..., T})
    t = torch.randint(0, sched.T, (B,), generator=generator).to(device)
    # Algorithm 1, line 4: \epsilon ~ N(0, I)
    noise = _randn(x0.shape, generator, device)
    return q_sample(sched, x0, t, noise), t, noise, _drop_mask(cond, p_uncond, B, generator, device)


def diffusion_loss(model: nn.Module, sched: NoiseSchedule, x0: torch.Tensor, cond=None,
                   p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The ε-prediction loss of Ho et al. 2020, Algorithm 1, on one minibatch; ``p_uncond``: the
    probability of replacing the condition by the null condition (classifier-free guidance training)."""
    x_t, t, noise, drop = _training_draws(sched, x0, cond, p_uncond, generator)
    # Algorithm 1, line 5: || \epsilon - \epsilon_\theta(x_t, t) ||^2
    return torch.mean((model(x_t, t, cond=cond, drop_cond=drop) - noise) ** 2)


def x0_loss(model: nn.Module, sched: NoiseSchedule, x0: torch.Tensor, cond=None,
            p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The :math:`x_0`-prediction loss (G.pt): the ε-loss weighted by :math:`1/\mathrm{SNR}(t)`."""
    x_t, t, _, drop = _training_draws(sched, x0, cond, p_uncond, generator)
    # || x_0 - \hat x_0(x_t, t) ||^2
    return torch.mean((model(x_t, t, cond=cond, drop_cond=drop) - x0) ** 2)


# --- Samplers ---
def _start(model, shape, noise, generator):
    device = _device_of(model)
    return device, (noise.to(device).clone() if noise is not None else _randn(shape, generator, device))


def _x0_and_eps(sched, x, t, eps, clip_x0):
    r""":math:`\hat x_0` from :math:`\hat\epsilon`; with ``clip_x0``, :math:`\hat x_0` clamped and :math:`\hat\epsilon` re-derived."""
    x0 = predict_x0(sched, x, t, eps)
    if clip_x0 is None:
        return x0, eps
    x0 = x0.clamp(-clip_x0, clip_x0)
    return x0, eps_from_x0(sched, x, t, x0)


def _finish(x, traj, return_trajectory):
    if return_trajectory:
        traj.append({"t": -1, "x_t": x.cpu(), "x0_pred": x.cpu()})
        return x, traj
    return x


@torch.no_grad()
def ddpm_sample(model: nn.Module, sched: NoiseSchedule, shape, cond=None, guidance: float = 1.0,
                generator: torch.Generator | None = None, return_trajectory: bool = False,
                noise: torch.Tensor | None = None, clip_x0: float | None = None, progress: bool = False):
    r"""Ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2), :math:`\sigma_t^2 = \tilde\beta_t`,
    no noise at the last step; arguments and return value as in :func:`ddim_sample`."""
    device, x = _start(model, shape, noise, generator)
    sched = sched.to(device)
    traj = []
    for step in _progress(range(sched.T - 1, -1, -1), disable=not progress, desc="DDPM"):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=device)
        x0, eps = _x0_and_eps(sched, x, t, guided_eps(model, x, t, cond, guidance), clip_x0)
        if return_trajectory:
            traj.append({"t": step, "x_t": x.cpu(), "x0_pred": x0.cpu()})
        # Algorithm 2, line 4: x_{t-1} = 1/\sqrt{\alpha_t} (x_t - \beta_t / \sqrt{1-\bar\alpha_t} \epsilon_\theta) + \sigma_t z
        x = (x - extract(sched.betas, t, x.shape) / extract(sched.sqrt_one_minus_alphas_cumprod, t, x.shape) * eps) \
            / extract(sched.alphas, t, x.shape).sqrt()
        if step > 0:
            x = x + extract(sched.posterior_variance, t, x.shape).sqrt() * _randn(x.shape, generator, device)
    return _finish(x, traj, return_trajectory)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` step indices evenly spread over ``[0, T)``, from the last to 0 (both included)."""
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM needs 1 <= steps <= T={T}; got steps={steps}")
    if steps == 1:
        return [T - 1]
    return sorted(set(torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()), reverse=True)


def check_guidance_interval(interval) -> tuple[float, float]:
    """``interval`` as ``(lo, hi)`` floats with ``0 <= lo < hi <= 1``; a one-line error otherwise."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two numbers (lo, hi) in [0, 1]; got {interval!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1; got ({lo}, {hi})")
    return lo, hi


def guidance_at(w: float, t: float, interval=None) -> float:
    r"""The guidance weight at noise level ``t`` (0 data, 1 noise): ``w`` inside ``interval = (lo, hi)``,
    1 (plain conditional) outside (Kynkäänniemi et al. 2024); ``interval=None`` guides everywhere."""
    if interval is None:
        return float(w)
    lo, hi = check_guidance_interval(interval)
    return float(w) if lo <= t <= hi else 1.0


@torch.no_grad()
def ddim_sample(model: nn.Module, sched: NoiseSchedule, shape, steps: int = 50, eta: float = 0.0,
                cond=None, guidance: float = 1.0, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, return_trajectory: bool = False,
                clip_x0: float | None = None, progress: bool = False, guidance_interval=None):
    r"""DDIM (Song et al. 2021, eq. 12) in ``steps`` calls with guidance (:func:`guided_eps`, :func:`guidance_at`);
    ``noise``: :math:`x_T`; ``clip_x0`` bounds :math:`\hat x_0`. Returns ``x_0`` or ``(x_0, trajectory)``:
    ``steps + 1`` dicts ``{"t", "x_t", "x0_pred"}`` on the CPU, the last (``t = -1``) the final sample."""
    device, x = _start(model, shape, noise, generator)
    sched = sched.to(device)
    ts = ddim_timesteps(sched.T, steps)
    traj = []
    for i in _progress(range(len(ts)), disable=not progress, desc="DDIM"):
        t = torch.full((x.shape[0],), ts[i], dtype=torch.long, device=device)
        eps = guided_eps(model, x, t, cond, guidance_at(guidance, ts[i] / sched.T, guidance_interval))
        # \hat x_0 = (x_t - \sqrt{1-\bar\alpha_t} \epsilon_\theta) / \sqrt{\bar\alpha_t}
        x0, eps = _x0_and_eps(sched, x, t, eps, clip_x0)
        if return_trajectory:
            traj.append({"t": ts[i], "x_t": x.cpu(), "x0_pred": x0.cpu()})
        # \bar\alpha_s of the next (earlier) step s; 1 after the last step (clean data)
        a_t = extract(sched.alphas_cumprod, t, x.shape)
        a_s = (extract(sched.alphas_cumprod, torch.full_like(t, ts[i + 1]), x.shape)
               if i + 1 < len(ts) else torch.ones_like(a_t))
        # \sigma = \eta \sqrt{(1-\bar\alpha_s)/(1-\bar\alpha_t)} \sqrt{1 - \bar\alpha_t/\bar\alpha_s}   (eq. 16)
        sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
        # x_s = \sqrt{\bar\alpha_s} \hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma^2} \epsilon_\theta + \sigma z   (eq. 12)
        x = a_s.sqrt() * x0 + (1 - a_s - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * _randn(x.shape, generator, device)
    return _finish(x, traj, return_trajectory)


# --- EMA and the shared trainer ---
@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    r"""In place, :math:`\theta_{ema} \leftarrow d\,\theta_{ema} + (1-d)\,\theta`; buffers are copied."""
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for b_ema, b in zip(ema_model.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(decay: float, step: int) -> float:
    r"""The decay at (0-based) ``step``: :math:`\min\big(d, \tfrac{1+k}{10+k}\big)` (< 0.999 until step 8,990)."""
    if step < 0:
        raise ValueError(f"ema_decay_at: step must be >= 0; got {step}")
    return min(decay, (1 + step) / (10 + step))


def _lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then constant or cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule {schedule!r}: expected 'constant' or 'cosine'")


def train_diffusion(model: nn.Module, data: torch.Tensor, sched: NoiseSchedule, steps: int,
                    batch_size: int, lr: float, ema_decay: float = 0.999, cond=None,
                    p_uncond: float = 0.0, generator: torch.Generator | None = None,
                    callback: Callable[[int, float, nn.Module, nn.Module], None] | None = None,
                    weight_decay: float = 0.0, warmup_steps: int = 0, lr_schedule: str = "constant",
                    progress: bool = True, desc: str = "diffusion", loss_fn: Callable | None = None,
                    name: str = "denoiser"):
    r"""Train on in-memory ``data`` (N, ...) and ``cond`` (N,) or None: ``(ema_model, history)``. A step: a
    minibatch from ``generator``, :func:`diffusion_loss` (or ``loss_fn(model, x0, cond, p_uncond, generator)``),
    a NaN check naming ``name`` and ``lr``, AdamW, gradient norm clipped at 1, EMA, ``callback(step, loss, ...)``."""
    if data.ndim < 2:
        raise ValueError(f"data must be (N, ...) with N points; got shape {tuple(data.shape)}")
    if cond is not None:
        cond = torch.as_tensor(cond).to(data.device)
        if cond.shape[0] != data.shape[0]:
            raise ValueError(f"cond has {cond.shape[0]} rows but data has {data.shape[0]}")
    N = data.shape[0]
    if loss_fn is None:
        sched = sched.to(data.device)
        loss_fn = lambda m, x0, c, p, g: diffusion_loss(m, sched, x0, c, p_uncond=p, generator=g)  # noqa: E731
    ema_model = copy.deepcopy(model).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"loss": [], "lr": [], "seconds": 0.0}
    model.train()
    start = time.perf_counter()
    for step in _progress(range(steps), desc=desc, **({} if progress else {"disable": True})):
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup_steps, lr_schedule)
        idx = torch.randint(0, N, (min(batch_size, N),), generator=generator).to(data.device)
        loss = loss_fn(model, data[idx], None if cond is None else cond[idx], p_uncond, generator)
        history["loss"].append(loss.item())
        _check_finite(history["loss"][-1], model=name, step=step, blame=f"lr={lr}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema_model, model, ema_decay_at(ema_decay, step))
        history["lr"].append(opt.param_groups[0]["lr"])
        if callback is not None:
            callback(step, history["loss"][-1], model, ema_model)
    history["seconds"] = time.perf_counter() - start
    model.eval()
    return ema_model, history


# --- Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023), taught in notebook 06 ---
# The straight path x_t = (1 - t) x_0 + t eps (t in [0, 1]) has the velocity eps - x_0; a network
# v_theta(x_t, t, c) regresses it, and sampling integrates dx/dt = v from t = 1 (noise) to t = 0 (data).
# Models receive t * FLOW_TIME_SCALE, so the denoisers built for integer steps are reused unchanged.

FLOW_TIME_SCALE = 1000.0


def flow_interpolate(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""The straight path :math:`x_t = (1-t)\,x_0 + t\,\epsilon`, ``t`` (B,) in [0, 1]."""
    tb = t.to(x0.dtype).reshape(t.shape[0], *([1] * (x0.ndim - 1)))
    return (1 - tb) * x0 + tb * noise


def logit_normal_t(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``n`` times in (0, 1): :math:`t = \sigma(n)`, :math:`n\sim\mathcal N(0,1)` (Esser et al. 2024)."""
    return torch.sigmoid(torch.randn(n, generator=generator))


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, cond=None, p_uncond: float = 0.0,
                       generator: torch.Generator | None = None, t_sampling: str = "logit_normal") -> torch.Tensor:
    r""":math:`\lVert(\epsilon-x_0)-v_\theta(x_t,t,c)\rVert^2` on one minibatch; ``t_sampling``:
    ``"logit_normal"`` or ``"uniform"``; ``cond``, ``p_uncond`` as in :func:`diffusion_loss`."""
    B, device = x0.shape[0], x0.device
    if t_sampling == "logit_normal":
        t = logit_normal_t(B, generator)
    elif t_sampling == "uniform":
        t = torch.rand(B, generator=generator)
    else:
        raise ValueError(f"unknown t_sampling {t_sampling!r}: expected 'logit_normal' or 'uniform'")
    t = t.to(device)
    noise = _randn(x0.shape, generator, device)
    x_t = flow_interpolate(x0, t, noise)
    v = model(x_t, t * FLOW_TIME_SCALE, cond=cond, drop_cond=_drop_mask(cond, p_uncond, B, generator, device))
    # target velocity dx_t/dt = \epsilon - x_0
    return torch.mean((v - (noise - x0)) ** 2)


def flow_timesteps(steps: int) -> list[float]:
    """``steps + 1`` times evenly spaced from 1 (noise) down to 0 (data)."""
    if steps < 1:
        raise ValueError(f"a flow sampler needs steps >= 1; got steps={steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


@torch.no_grad()
def flow_sample(model: nn.Module, shape, steps: int = 20, method: str = "euler", cond=None,
                guidance: float = 1.0, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, return_trajectory: bool = False,
                progress: bool = False, guidance_interval=None):
    r"""Integrate :math:`dx/dt = \tilde v(x, t, c)` from 1 to 0 in ``steps`` ``"euler"`` or ``"heun"`` steps;
    guidance and the trajectory (:math:`\hat x_0 = x_t - t\,\tilde v`) as in :func:`ddim_sample`."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown flow sampler {method!r}: expected 'euler' or 'heun'")
    device, x = _start(model, shape, noise, generator)
    ts, B = flow_timesteps(steps), x.shape[0]

    def vel(x_, t_):
        return guided_eps(model, x_, torch.full((B,), t_ * FLOW_TIME_SCALE, device=device), cond,
                          guidance_at(guidance, t_, guidance_interval))

    traj = []
    for i in _progress(range(steps), disable=not progress, desc="flow"):
        t, s = ts[i], ts[i + 1]
        h, v = t - s, vel(x, t)
        if return_trajectory:
            traj.append({"t": t, "x_t": x.cpu(), "x0_pred": (x - t * v).cpu()})
        # Euler: x_s = x_t - h v(x_t, t);  Heun: x_s = x_t - h/2 (v(x_t, t) + v(x_euler, s))
        x_euler = x - h * v
        x = x - 0.5 * h * (v + vel(x_euler, s)) if method == "heun" else x_euler
    return _finish(x, traj, return_trajectory)


def train_flow(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int, lr: float,
               t_sampling: str = "logit_normal", **kwargs):
    r"""Train a velocity model with :func:`flow_matching_loss` by :func:`train_diffusion` (same keywords)."""
    def loss_fn(m, x0, c, p, g):
        return flow_matching_loss(m, x0, c, p, g, t_sampling=t_sampling)

    kwargs.setdefault("desc", "flow matching")
    return train_diffusion(model, data, None, steps, batch_size, lr, loss_fn=loss_fn, **kwargs)


# --- Latent standardisation: what every diffusion model of the series sees ---
class LatentStandardizer:
    r""":math:`u = (z - \bar z) / s` and back: one mean and spread per dimension for flat latents (N, L),
    per channel for codes (N, C, H, W) (shaped (C, 1, 1)); :math:`s` is floored at ``eps``."""

    def __init__(self, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None):
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, z: torch.Tensor, eps: float = 1e-6) -> "LatentStandardizer":
        z = z.detach().to(torch.float32)
        if z.ndim not in (2, 4) or z.shape[0] < 2:
            raise ValueError(f"fit needs latents of shape (N >= 2, L) or (N >= 2, C, H, W), found {tuple(z.shape)}")
        dims = (0, 2, 3) if z.ndim == 4 else (0,)
        # \bar z = \frac1N \sum_i z_i ,  s = \max(\mathrm{std}(z), \epsilon)
        mean, scale = z.mean(dim=dims), z.std(dim=dims).clamp_min(eps)
        if z.ndim == 4:
            mean, scale = mean[:, None, None], scale[:, None, None]
        return cls(mean.cpu(), scale.cpu())

    def _fitted(self) -> None:
        if self.mean is None or self.scale is None:
            raise RuntimeError("LatentStandardizer is not fitted: use LatentStandardizer.fit(latents)")

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        self._fitted()
        return (z - self.mean.to(z)) / self.scale.to(z)

    def unstandardize(self, u: torch.Tensor) -> torch.Tensor:
        self._fitted()
        return u * self.scale.to(u) + self.mean.to(u)

    def state(self) -> dict[str, torch.Tensor]:
        self._fitted()
        return {"mean": self.mean.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state(cls, state) -> "LatentStandardizer":
        return cls(mean=state["mean"].to(torch.float32), scale=state["scale"].to(torch.float32))
