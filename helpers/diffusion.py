r"""Denoising diffusion: the forward process, the ε-prediction loss, DDPM and DDIM sampling, EMA.

The idea in five lines
----------------------
Take a data point :math:`x_0` (here: a latent vector of a trained network, or
an image latent) and destroy it in :math:`T` small Gaussian steps. Train a
network :math:`\epsilon_\theta(x_t, t)` to say which noise was added. Then start
from pure noise and undo the steps one at a time with that network.

Forward process (Ho et al. 2020, eq. 2 and 4)
---------------------------------------------
Each step shrinks the signal a little and adds noise of variance :math:`\beta_t`:

.. math::  q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big).

With :math:`\alpha_t = 1-\beta_t` and :math:`\bar\alpha_t = \prod_{s\le t}\alpha_s`
the steps compose into one jump from the clean data to any step:

.. math::  x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,
           \qquad \epsilon \sim \mathcal N(0, I).

So training needs no simulation: draw :math:`t`, draw :math:`\epsilon`, jump.
The *noise schedule* :math:`\beta_1..\beta_T` decides how fast :math:`\bar\alpha_t`
falls from ~1 (clean) to ~0 (pure noise); :func:`linear_beta_schedule` and
:func:`cosine_beta_schedule` are the two classic choices.

Training (Ho et al. 2020, Algorithm 1)
--------------------------------------
Minimise the "simple" loss :math:`\lVert \epsilon - \epsilon_\theta(x_t, t)\rVert^2`
over random :math:`t` and :math:`\epsilon` (:func:`diffusion_loss`). Predicting
the noise is equivalent to predicting the clean point, because the jump above
can be inverted:

.. math::  \hat x_0 = \big(x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta\big) / \sqrt{\bar\alpha_t}.

A network may also be trained to output :math:`\hat x_0` itself (:func:`x0_loss`, as G.pt
does); :class:`EpsFromX0` converts its output back to :math:`\hat\epsilon` for the samplers.

DDPM sampling (Ho et al. 2020, Algorithm 2)
-------------------------------------------
Walk back through all :math:`T` steps, each time taking the mean of the
reverse Gaussian and adding fresh noise (except at the last step):

.. math::  x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,
           \epsilon_\theta(x_t,t)\Big) + \sigma_t z .

DDIM sampling (Song et al. 2021, eq. 12)
----------------------------------------
The same trained network also defines a family of non-Markovian reverse
processes that may skip steps. From :math:`t` to an earlier :math:`s`:

.. math::  x_s = \sqrt{\bar\alpha_s}\,\hat x_0
                 + \sqrt{1-\bar\alpha_s-\sigma^2}\;\epsilon_\theta(x_t,t) + \sigma z,
           \qquad \sigma = \eta\sqrt{\tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}}
                           \sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_s}} .

With :math:`\eta = 0` the sampler is deterministic: the same starting noise
always gives the same sample, in as few as 10-50 network calls instead of
:math:`T`. With :math:`\eta = 1` it is DDPM-like.

Conditioning and classifier-free guidance (Ho & Salimans 2022)
--------------------------------------------------------------
A conditional denoiser :math:`\epsilon_\theta(x_t, t, c)` is trained with the
condition replaced by a learned "null" condition with probability
``p_uncond``, so the same network is also unconditional. At sampling time,

.. math::  \tilde\epsilon = \epsilon_\theta(x_t,t,\varnothing)
           + w\,\big(\epsilon_\theta(x_t,t,c) - \epsilon_\theta(x_t,t,\varnothing)\big),

(:math:`w = 1`: plain conditional; :math:`w = 0`: unconditional; :math:`w>1`:
pushed harder towards the condition). Both terms come from ONE batched call.

Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023)
--------------------------------------------------------------------
The same networks can learn a *velocity* instead of a noise: on the straight
path :math:`x_t=(1-t)\,x_0+t\,\epsilon`, :math:`t\in[0,1]`, regress
:math:`v_\theta(x_t,t,c)\approx\epsilon-x_0` (:func:`flow_matching_loss`, :func:`train_flow`)
and integrate :math:`dx/dt=v` from noise (:math:`t=1`) to data (:math:`t=0`) with
Euler or Heun steps (:func:`flow_sample`); guidance mixes velocities exactly as above.

Model calling convention
------------------------
Every denoiser in this series is called as ``model(x_t, t, cond=None, drop_cond=None)``:
``t`` is a long tensor ``(B,)`` of step indices in ``[0, T)``; ``cond=None``
means unconditional for the whole batch; ``drop_cond`` is a bool tensor ``(B,)``
marking the rows that use the null condition.

Exponential moving average
--------------------------
Samples come from an exponential moving average of the weights seen during
training (:func:`update_ema`), which is smoother than the last iterate.

Shapes: everything here is rank-generic. Weight latents are ``(B, d)``,
image tensors ``(B, C, H, W)``; :func:`extract` broadcasts a per-step
coefficient to either.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .runtime import device_of as _device_of, progress as _progress

__all__ = [
    "extract", "linear_beta_schedule", "cosine_beta_schedule", "NoiseSchedule",
    "q_sample", "predict_x0", "PREDICTIONS", "check_prediction", "eps_from_x0", "EpsFromX0",
    "guided_eps", "guidance_at", "check_guidance_interval", "diffusion_loss", "x0_loss", "ddpm_sample",
    "ddim_timesteps", "ddim_sample", "update_ema", "ema_decay_at", "train_diffusion",
    "flow_interpolate", "logit_normal_t", "flow_matching_loss", "flow_timesteps", "flow_sample",
    "train_flow",
]


# ---------------------------------------------------------------------------
# Coefficients and schedules
# ---------------------------------------------------------------------------

def extract(a: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    """Pick ``a[t]`` for each batch row and shape it to broadcast against ``x_shape``.

    ``a`` is a per-step table ``(T,)`` (e.g. :math:`\\sqrt{\\bar\\alpha_t}`), ``t``
    a long tensor ``(B,)``. The result has shape ``(B, 1, ..., 1)`` with as many
    ones as ``x_shape`` has trailing dimensions, so it serves 2-D latents
    ``(B, d)`` and 4-D images ``(B, C, H, W)`` alike.
    """
    t = torch.as_tensor(t, device=a.device).long()
    if t.ndim == 0:
        t = t.expand(x_shape[0])
    out = a.gather(0, t)
    return out.reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    r"""Ho et al. 2020: :math:`\beta_t` evenly spaced from ``beta_start`` to ``beta_end`` (T values).

    These defaults were chosen for T = 1000; see :meth:`NoiseSchedule.make` for
    the rescaling used when T is smaller.
    """
    # \beta_t = \beta_1 + (t-1)/(T-1) (\beta_T - \beta_1)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008) -> torch.Tensor:
    r"""Nichol & Dhariwal 2021, eq. 17: :math:`\bar\alpha_t` follows a squared cosine.

    The signal is destroyed more evenly over the steps than with the linear
    schedule; :math:`\beta_t` is clipped at 0.999 to avoid a singular last step.
    That leaves :math:`\bar\alpha_{T}` around 1e-9, so samplers that start at
    the last step should bound :math:`\hat x_0` (``clip_x0``) for an imperfect model.
    """
    steps = torch.arange(T + 1, dtype=torch.float64)
    # f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ),  \bar\alpha_t = f(t) / f(0)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    # \beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=0.999)


@dataclass
class NoiseSchedule:
    r"""All per-step tables of a schedule, computed once from :math:`\beta_t`.

    Index ``t`` runs over ``0..T-1`` (the paper's :math:`t = 1..T`). Attributes
    (each a float32 tensor of shape ``(T,)``):

    - ``betas`` :math:`\beta_t`, ``alphas`` :math:`\alpha_t = 1-\beta_t`,
    - ``alphas_cumprod`` :math:`\bar\alpha_t`, ``alphas_cumprod_prev`` :math:`\bar\alpha_{t-1}` (1 at t=0),
    - ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    - ``posterior_variance`` :math:`\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t`.
    """

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
        return cls(
            betas=f32(betas), alphas=f32(alphas), alphas_cumprod=f32(alphas_cumprod),
            alphas_cumprod_prev=f32(alphas_cumprod_prev),
            sqrt_alphas_cumprod=f32(alphas_cumprod.sqrt()),
            sqrt_one_minus_alphas_cumprod=f32((1 - alphas_cumprod).sqrt()),
            posterior_variance=f32(posterior_variance), name=name,
        )

    @classmethod
    def make(cls, name: str, T: int) -> "NoiseSchedule":
        """``"linear"`` or ``"cosine"`` schedule with ``T`` steps.

        ``"linear"`` uses Ho et al.'s β range (1e-4 to 2e-2) scaled by 1000/T
        (as in Nichol & Dhariwal's code), so that a short schedule still ends in
        (almost) pure noise; for T = 1000 it is exactly Ho et al.'s.
        """
        if T < 2:
            raise ValueError(f"a schedule needs at least 2 steps; got T={T}")
        if name == "linear":
            scale = 1000.0 / T
            return cls.from_betas(linear_beta_schedule(T, 1e-4 * scale, min(2e-2 * scale, 0.999)), name)
        if name == "cosine":
            return cls.from_betas(cosine_beta_schedule(T), name)
        raise ValueError(f"unknown schedule {name!r}: expected 'linear' or 'cosine'")

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.betas.shape[0])

    def to(self, device) -> "NoiseSchedule":
        """A copy with every table on ``device``."""
        fields = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()}
        return NoiseSchedule(**fields)


# ---------------------------------------------------------------------------
# Forward process and training loss
# ---------------------------------------------------------------------------

def _randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU generator (reproducible), moved to ``device``."""
    return torch.randn(tuple(shape), generator=generator).to(device)


def q_sample(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    r"""Jump from clean :math:`x_0` to step :math:`t` in one go (Ho et al. 2020, eq. 4).

    ``x0`` :math:`x_0` (B, ...), ``t`` (B,) long, ``noise`` :math:`\epsilon` like ``x0``.
    """
    # x_t = \sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t} \epsilon
    return (extract(sched.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def predict_x0(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
               eps: torch.Tensor) -> torch.Tensor:
    r"""Invert :func:`q_sample` with a noise estimate: :math:`\hat x_0` from :math:`x_t` and :math:`\hat\epsilon`."""
    # \hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t} \hat\epsilon) / \sqrt{\bar\alpha_t}
    return ((x_t - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * eps)
            / extract(sched.sqrt_alphas_cumprod, t, x_t.shape))


PREDICTIONS = ("eps", "x0")
"""What a denoiser's output stands for: the noise ("eps", :func:`diffusion_loss`) or the clean point ("x0", :func:`x0_loss`)."""


def check_prediction(prediction) -> str:
    """``prediction`` if it is one of :data:`PREDICTIONS`, else a one-line ValueError."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: expected one of {', '.join(repr(p) for p in PREDICTIONS)}, "
                         f"found {prediction!r}")
    return prediction


def eps_from_x0(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
                x0: torch.Tensor) -> torch.Tensor:
    r"""The noise estimate that goes with a clean-point estimate: the inverse of :func:`predict_x0`.

    Solving :math:`x_t = \sqrt{\bar\alpha_t}\,\hat x_0 + \sqrt{1-\bar\alpha_t}\,\hat\epsilon`
    for :math:`\hat\epsilon`, so that ``predict_x0(sched, x_t, t, eps_from_x0(sched, x_t, t, x0))``
    gives back ``x0``.
    """
    # \hat\epsilon = (x_t - \sqrt{\bar\alpha_t} \hat x_0) / \sqrt{1 - \bar\alpha_t}
    return ((x_t - extract(sched.sqrt_alphas_cumprod, t, x_t.shape) * x0)
            / extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape))


class EpsFromX0(nn.Module):
    r"""A network trained to predict :math:`\hat x_0` (:func:`x0_loss`), seen by the samplers as an
    :math:`\epsilon`-predictor.

    ``forward(x_t, t, cond, drop_cond)`` calls ``x0_model`` and converts its output with
    :func:`eps_from_x0`, so DDPM, DDIM, clipping and classifier-free guidance run unchanged
    (guidance mixes :math:`\hat\epsilon`, which is affine in :math:`\hat x_0` at a given
    :math:`x_t`, so it is the same mixture of :math:`\hat x_0`). ``dim`` is the wrapped
    model's; the wrapped model is what gets saved (``x0_model``).
    """

    def __init__(self, x0_model: nn.Module, sched: NoiseSchedule):
        super().__init__()
        self.x0_model = x0_model
        self.sched = sched
        self.dim = getattr(x0_model, "dim", None)
        self.train(x0_model.training)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, drop_cond=None) -> torch.Tensor:
        x0 = self.x0_model(x_t, t, cond=cond, drop_cond=drop_cond)
        return eps_from_x0(self.sched.to(x_t.device), x_t, t, x0)


def _repeat_cond(cond: torch.Tensor, n: int) -> torch.Tensor:
    """Broadcast a single condition (scalar / 0-d) to a batch of ``n``; pass batches through."""
    cond = torch.as_tensor(cond)
    if cond.ndim == 0:
        cond = cond.expand(n)
    return cond


def guided_eps(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond=None,
               guidance: float = 1.0) -> torch.Tensor:
    r"""Noise estimate with classifier-free guidance, from one batched model call.

    ``cond=None`` → unconditional. ``guidance`` is :math:`w`; ``w == 1`` is the
    plain conditional call (no extra work).
    """
    B = x_t.shape[0]
    if cond is None:
        return model(x_t, t, cond=None)
    cond = _repeat_cond(cond, B).to(x_t.device)
    if guidance == 1.0:
        return model(x_t, t, cond=cond)
    # one call on [x_t; x_t]: first half with the condition, second half with the null condition
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x_t.device)
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=torch.cat([cond, cond]), drop_cond=drop)
    eps_cond, eps_uncond = eps[:B], eps[B:]
    # \tilde\epsilon = \epsilon(x_t, \varnothing) + w (\epsilon(x_t, c) - \epsilon(x_t, \varnothing))
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def _training_draws(sched: NoiseSchedule, x0: torch.Tensor, cond, p_uncond: float,
                    generator: torch.Generator | None):
    """The random draws of one training minibatch, shared by :func:`diffusion_loss` and
    :func:`x0_loss` (in this order, so both losses see the same draws): the steps t, the
    noise and the dropped conditions. Returns ``(x_t, t, noise, drop)``."""
    B, device = x0.shape[0], x0.device
    # Algorithm 1, line 3: t ~ Uniform({1, ..., T})
    t = torch.randint(0, sched.T, (B,), generator=generator).to(device)
    # Algorithm 1, line 4: \epsilon ~ N(0, I)
    noise = _randn(x0.shape, generator, device)
    x_t = q_sample(sched, x0, t, noise)
    drop = None
    if cond is not None and p_uncond > 0:
        drop = (torch.rand(B, generator=generator) < p_uncond).to(device)
    return x_t, t, noise, drop


def diffusion_loss(model: nn.Module, sched: NoiseSchedule, x0: torch.Tensor, cond=None,
                   p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The ε-prediction loss of Ho et al. 2020, Algorithm 1 (one minibatch).

    ``x0`` a batch of clean data :math:`x_0`; ``cond`` its conditions
    :math:`c` (or None); ``p_uncond`` the probability of replacing :math:`c` by
    the null condition (classifier-free guidance training).
    """
    x_t, t, noise, drop = _training_draws(sched, x0, cond, p_uncond, generator)
    # Algorithm 1, line 5: gradient step on || \epsilon - \epsilon_\theta(x_t, t) ||^2
    eps = model(x_t, t, cond=cond, drop_cond=drop)
    return torch.mean((eps - noise) ** 2)


def x0_loss(model: nn.Module, sched: NoiseSchedule, x0: torch.Tensor, cond=None,
            p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The :math:`x_0`-prediction loss (as in G.pt): the network outputs :math:`\hat x_0` directly.

    Same draws as :func:`diffusion_loss` (:math:`t`, :math:`\epsilon`, the dropped conditions),
    target :math:`x_0` instead of :math:`\epsilon`: :math:`\lVert x_0 - \hat x_0(x_t, t)\rVert^2`.

    **How it weights the steps.** Write :math:`\hat\epsilon` for the noise estimate that goes
    with :math:`\hat x_0` (:func:`eps_from_x0`). Both :math:`x_0` and :math:`\hat x_0` are
    :math:`(x_t - \sqrt{1-\bar\alpha_t}\,\cdot)/\sqrt{\bar\alpha_t}` of :math:`\epsilon` and
    :math:`\hat\epsilon`, so

    .. math::  \lVert x_0 - \hat x_0\rVert^2 = \frac{1-\bar\alpha_t}{\bar\alpha_t}\,
               \lVert \epsilon - \hat\epsilon\rVert^2 = \frac{1}{\mathrm{SNR}(t)}\,
               \lVert \epsilon - \hat\epsilon\rVert^2 .

    Against the ε-loss, each step is weighted by :math:`1/\mathrm{SNR}(t)`: almost nothing
    near the data (:math:`t \to 0`, weight ~2e-4 for T = 500 linear) and very much near pure
    noise (weight ~3e4 at the last step). The x0-network spends its capacity on the coarse,
    high-noise guesses of the clean point; the ε-network on the fine, low-noise corrections.
    """
    x_t, t, _, drop = _training_draws(sched, x0, cond, p_uncond, generator)
    x0_hat = model(x_t, t, cond=cond, drop_cond=drop)
    # || x_0 - \hat x_0(x_t, t) ||^2
    return torch.mean((x0_hat - x0) ** 2)


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------

@torch.no_grad()
def ddpm_sample(model: nn.Module, sched: NoiseSchedule, shape, cond=None, guidance: float = 1.0,
                generator: torch.Generator | None = None, return_trajectory: bool = False,
                noise: torch.Tensor | None = None, clip_x0: float | None = None,
                progress: bool = False):
    r"""Ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2).

    ``shape`` of the sample, e.g. ``(n, d)``; ``cond``/``guidance`` as in
    :func:`guided_eps`; ``noise`` an optional :math:`x_T`. Uses
    :math:`\sigma_t^2 = \tilde\beta_t` and adds no noise at the last step.
    ``clip_x0`` as in :func:`ddim_sample`.
    Returns ``x_0`` or, with ``return_trajectory``, ``(x_0, trajectory)``
    (see :func:`ddim_sample` for the trajectory format).
    """
    device = _device_of(model)
    sched = sched.to(device)
    # Algorithm 2, line 1: x_T ~ N(0, I)
    x = noise.to(device).clone() if noise is not None else _randn(shape, generator, device)
    traj = []
    for step in _progress(range(sched.T - 1, -1, -1), disable=not progress, desc="DDPM"):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=device)
        eps = guided_eps(model, x, t, cond, guidance)
        x0 = predict_x0(sched, x, t, eps)
        if clip_x0 is not None:
            x0, eps = _clip_prediction(sched, x, t, x0, clip_x0)
        if return_trajectory:
            traj.append({"t": step, "x_t": x.cpu(), "x0_pred": x0.cpu()})
        # Algorithm 2, line 4: x_{t-1} = 1/\sqrt{\alpha_t} (x_t - \beta_t / \sqrt{1-\bar\alpha_t} \epsilon_\theta) + \sigma_t z
        mean = (x - extract(sched.betas, t, x.shape) / extract(sched.sqrt_one_minus_alphas_cumprod, t, x.shape) * eps) \
            / extract(sched.alphas, t, x.shape).sqrt()
        if step > 0:
            # Algorithm 2, line 3: z ~ N(0, I) if t > 1, else z = 0
            z = _randn(x.shape, generator, device)
            x = mean + extract(sched.posterior_variance, t, x.shape).sqrt() * z
        else:
            x = mean
    if return_trajectory:
        traj.append({"t": -1, "x_t": x.cpu(), "x0_pred": x.cpu()})
        return x, traj
    return x


def _clip_prediction(sched: NoiseSchedule, x_t, t, x0, bound: float):
    r"""Clamp :math:`\hat x_0` to ``[-bound, bound]`` and return it with the matching :math:`\hat\epsilon`."""
    x0 = x0.clamp(-bound, bound)
    # \hat\epsilon = (x_t - \sqrt{\bar\alpha_t} \hat x_0) / \sqrt{1 - \bar\alpha_t}
    eps = ((x_t - extract(sched.sqrt_alphas_cumprod, t, x_t.shape) * x0)
           / extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape))
    return x0, eps


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` step indices evenly spread over ``[0, T)``, from the last to 0 (always including both)."""
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM needs 1 <= steps <= T={T}; got steps={steps}")
    if steps == 1:
        return [T - 1]
    ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(ts), reverse=True)


def guidance_at(w: float, t: float, interval=None) -> float:
    r"""The guidance weight at noise level ``t`` with a guidance interval (Kynkäänniemi et al. 2024).

    ``t`` is the fraction of the way from data (0) to pure noise (1): the flow time, or
    the DDPM step over T. Guidance is applied only inside ``interval = (lo, hi)``; outside
    it the sampler uses the plain conditional model:

    .. math:: w(t) = \begin{cases} w & t_{lo} \le t \le t_{hi} \\ 1 & \text{otherwise.} \end{cases}

    At high noise (:math:`t > t_{hi}`) a large :math:`w` pushes every sample of a class
    toward the same few layouts (the images lose variety); at low noise it only sharpens
    details that the class does not decide. ``interval=None`` guides at every step.
    """
    if interval is None:
        return float(w)
    lo, hi = check_guidance_interval(interval)
    return float(w) if lo <= t <= hi else 1.0


def check_guidance_interval(interval) -> tuple[float, float]:
    """``interval`` as ``(lo, hi)`` floats, after checking ``0 <= lo < hi <= 1``; a clear error otherwise."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two numbers (lo, hi) in [0, 1]; got {interval!r}") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= lo < hi <= 1; got ({lo}, {hi})")
    return lo, hi


@torch.no_grad()
def ddim_sample(model: nn.Module, sched: NoiseSchedule, shape, steps: int = 50, eta: float = 0.0,
                cond=None, guidance: float = 1.0, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, return_trajectory: bool = False,
                clip_x0: float | None = None, progress: bool = False, guidance_interval=None):
    r"""DDIM sampling (Song et al. 2021, eq. 12) with any number of ``steps`` and noise level ``eta``.

    - ``shape``: shape of the sample, e.g. ``(n, d)`` or ``(n, C, H, W)``;
    - ``steps``: number of network calls (a subsequence of the T training steps);
    - ``eta``: :math:`\eta`; 0 = deterministic (same ``noise`` → same sample), 1 ≈ DDPM;
    - ``cond``, ``guidance``: condition :math:`c` and guidance weight :math:`w` (:func:`guided_eps`);
    - ``guidance_interval``: ``(lo, hi)``: guide only at steps with :math:`t/T` inside it
      (:func:`guidance_at`); None = at every step;
    - ``noise``: the starting point :math:`x_T` (drawn from ``generator`` if None);
    - ``clip_x0``: if set, clamp :math:`\hat x_0` to ``[-clip_x0, clip_x0]`` (and
      re-derive :math:`\hat\epsilon` from it). Near :math:`t = T`,
      :math:`\sqrt{\bar\alpha_t}` is tiny and :math:`\hat x_0` amplifies every error in
      :math:`\hat\epsilon` (by ~2e4 for the cosine schedule's last step), so a
      bound on the data range keeps an imperfect model's first steps sane.

    Returns ``x_0``, or ``(x_0, trajectory)`` with ``return_trajectory``: a list
    of ``steps + 1`` dicts ``{"t", "x_t", "x0_pred"}`` (CPU tensors), the first
    holding the starting noise and the model's first guess of :math:`x_0`, the
    last (``t = -1``) the final sample. Sliders and GIFs index this list.
    """
    device = _device_of(model)
    sched = sched.to(device)
    x = noise.to(device).clone() if noise is not None else _randn(shape, generator, device)
    ts = ddim_timesteps(sched.T, steps)
    if guidance_interval is not None:
        check_guidance_interval(guidance_interval)
    traj = []
    for i in _progress(range(len(ts)), disable=not progress, desc="DDIM"):
        t = torch.full((x.shape[0],), ts[i], dtype=torch.long, device=device)
        eps = guided_eps(model, x, t, cond, guidance_at(guidance, ts[i] / sched.T, guidance_interval))
        # \hat x_0 = (x_t - \sqrt{1-\bar\alpha_t} \epsilon_\theta) / \sqrt{\bar\alpha_t}   (eq. 12, "predicted x_0")
        x0 = predict_x0(sched, x, t, eps)
        if clip_x0 is not None:
            x0, eps = _clip_prediction(sched, x, t, x0, clip_x0)
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
    if return_trajectory:
        traj.append({"t": -1, "x_t": x.cpu(), "x0_pred": x.cpu()})
        return x, traj
    return x


# ---------------------------------------------------------------------------
# EMA and the shared trainer
# ---------------------------------------------------------------------------

@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    r"""In place: :math:`\theta_{ema} \leftarrow d\,\theta_{ema} + (1-d)\,\theta` for every parameter.

    Buffers (e.g. running statistics) are copied as they are.
    """
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        # \theta_ema = d \theta_ema + (1 - d) \theta
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for b_ema, b in zip(ema_model.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(decay: float, step: int, warmup: bool = True) -> float:
    r"""The EMA decay :func:`train_diffusion` uses at (0-based) ``step``: :math:`\min\big(d, \tfrac{1+k}{10+k}\big)`.

    The warm-up keeps a short run's EMA from being dominated by the random
    initialisation. It binds for long: it is below 0.999 until step 8,990, so in runs
    of a few thousand steps it, not ``decay``, sets the average (0.997 at step 3,000,
    0.998 at step 5,000), and decays of 0.999 or 0.9995 train the same EMA in any shorter run.
    """
    if step < 0:
        raise ValueError(f"ema_decay_at: step must be >= 0; got {step}")
    # d_k = min(d, (1 + k) / (10 + k))
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def _lr_factor(step: int, steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up, then constant or cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule {schedule!r}: expected 'constant' or 'cosine'")


def train_diffusion(model: nn.Module, data: torch.Tensor, sched: NoiseSchedule, steps: int,
                    batch_size: int, lr: float, ema_decay: float = 0.999, cond=None,
                    p_uncond: float = 0.0, generator: torch.Generator | None = None,
                    callback: Callable[[int, float, nn.Module, nn.Module], None] | None = None,
                    weight_decay: float = 0.0, warmup_steps: int = 0, lr_schedule: str = "constant",
                    grad_clip: float | None = 1.0, ema_warmup: bool = True,
                    progress: bool = True, desc: str = "diffusion", loss_fn: Callable | None = None):
    r"""Train a denoiser with :func:`diffusion_loss` on in-memory data; return ``(ema_model, history)``.

    - ``data``: the clean points :math:`x_0`, shape ``(N, ...)``, on the model's device;
    - ``cond``: per-point conditions ``(N,)`` (scalars or class indices) or None;
    - ``steps`` optimiser steps on random minibatches of ``batch_size`` (AdamW, ``lr``,
      ``weight_decay``; optional linear ``warmup_steps`` and ``lr_schedule="cosine"``);
    - ``ema_decay`` :math:`d` of :func:`update_ema`; with ``ema_warmup`` the decay
      used at step k is :func:`ema_decay_at` (a warm-up that binds for thousands of steps);
    - ``callback(step, loss, model, ema_model)`` is called after every step;
    - ``loss_fn(model, x0, cond, p_uncond, generator)``: another objective in place of
      :func:`diffusion_loss` (``sched`` may then be None); :func:`train_flow` passes
      :func:`flow_matching_loss` here.

    ``model`` is trained in place; the returned EMA copy (in eval mode) is what
    to sample from. ``history`` holds per-step ``loss`` and ``lr`` lists and the
    wall-clock ``seconds``.
    """
    import time

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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        update_ema(ema_model, model, ema_decay_at(ema_decay, step, ema_warmup))
        history["loss"].append(loss.item())
        history["lr"].append(opt.param_groups[0]["lr"])
        if callback is not None:
            callback(step, history["loss"][-1], model, ema_model)
    history["seconds"] = time.perf_counter() - start
    model.eval()
    return ema_model, history


# ---------------------------------------------------------------------------
# Conditional flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023)
# ---------------------------------------------------------------------------
#
# Instead of T discrete noising steps, join each data point x_0 to a noise
# sample eps by a straight line in continuous time t in [0, 1]:
#
#     x_t = (1 - t) x_0 + t eps,            x_0 at t = 0, pure noise at t = 1.
#
# Along that line the velocity is constant, dx_t/dt = eps - x_0. A network
# v_theta(x_t, t, c) is trained to regress it:
#
#     L = E_{t, x_0, eps} || (eps - x_0) - v_theta(x_t, t, c) ||^2 .
#
# The minimiser is the conditional mean E[eps - x_0 | x_t], a velocity field
# whose ODE dx/dt = v(x, t) carries the noise distribution (t = 1) to the data
# distribution (t = 0). Sampling integrates it backwards from t = 1 to 0 with
# Euler or Heun steps. t is drawn from a logit-normal, t = sigmoid(m + s n),
# n ~ N(0, 1) (Esser et al. 2024), which spends more training on middle t.
# Classifier-free guidance is the same mixture as for the noise estimate:
#     v~ = v(x, t, null) + w (v(x, t, c) - v(x, t, null))   (see guided_eps).
#
# Models follow the calling convention above; they receive t * time_scale
# (default 1000), so the denoisers built for integer steps in [0, T) are reused
# unchanged. Everything is rank-generic: (B, d) latents and (B, C, H, W) images.

FLOW_TIME_SCALE = 1000.0


def _bcast(t: torch.Tensor, x_shape) -> torch.Tensor:
    """A per-row time (B,) shaped (B, 1, ..., 1) to broadcast against ``x_shape``."""
    return t.reshape(t.shape[0], *([1] * (len(x_shape) - 1)))


def flow_interpolate(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""The straight path between data and noise: :math:`x_t = (1-t)\,x_0 + t\,\epsilon`, ``t`` (B,) in [0, 1]."""
    tb = _bcast(t.to(x0.dtype), x0.shape)
    # x_t = (1 - t) x_0 + t \epsilon
    return (1 - tb) * x0 + tb * noise


def logit_normal_t(n: int, generator: torch.Generator | None = None, mean: float = 0.0,
                   std: float = 1.0) -> torch.Tensor:
    r"""``n`` times in (0, 1) from a logit-normal: :math:`t = \sigma(m + s\,n)`, :math:`n\sim\mathcal N(0,1)`."""
    # t = sigmoid(m + s n)
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, cond=None, p_uncond: float = 0.0,
                       generator: torch.Generator | None = None, t_sampling: str = "logit_normal",
                       time_scale: float = FLOW_TIME_SCALE) -> torch.Tensor:
    r"""Conditional flow matching loss on one minibatch: :math:`\lVert(\epsilon-x_0)-v_\theta(x_t,t,c)\rVert^2`.

    ``t_sampling``: ``"logit_normal"`` (default) or ``"uniform"``; ``cond`` and
    ``p_uncond`` as in :func:`diffusion_loss`.
    """
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
    drop = None
    if cond is not None and p_uncond > 0:
        drop = (torch.rand(B, generator=generator) < p_uncond).to(device)
    v = model(x_t, t * time_scale, cond=cond, drop_cond=drop)
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
                time_scale: float = FLOW_TIME_SCALE, progress: bool = False, guidance_interval=None):
    r"""Integrate :math:`dx/dt = \tilde v(x, t, c)` from :math:`t=1` (noise) to :math:`t=0` (data).

    - ``steps``: number of steps of size :math:`h = 1/\text{steps}`;
    - ``method``: ``"euler"`` (one model call a step) or ``"heun"`` (two; second order);
    - ``cond``, ``guidance``: class and classifier-free guidance weight (:func:`guided_eps`);
    - ``guidance_interval``: ``(lo, hi)``: guide only at times :math:`t` inside it
      (:func:`guidance_at`); None = at every step;
    - ``noise``: the start :math:`x_1` (drawn from ``generator`` if None).

    Returns ``x_0`` or ``(x_0, trajectory)`` with the same trajectory format as
    :func:`ddim_sample` (``"t"`` is the continuous time; ``"x0_pred"`` is
    :math:`\hat x_0 = x_t - t\,\tilde v`, the point the current velocity aims at).
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown flow sampler {method!r}: expected 'euler' or 'heun'")
    device = _device_of(model)
    x = noise.to(device).clone() if noise is not None else _randn(shape, generator, device)
    ts = flow_timesteps(steps)
    B = x.shape[0]
    if guidance_interval is not None:
        check_guidance_interval(guidance_interval)

    def vel(x_, t_):
        return guided_eps(model, x_, torch.full((B,), t_ * time_scale, device=device), cond,
                          guidance_at(guidance, t_, guidance_interval))

    traj = []
    for i in _progress(range(steps), disable=not progress, desc="flow"):
        t, s = ts[i], ts[i + 1]
        h = t - s
        v = vel(x, t)
        if return_trajectory:
            # \hat x_0 = x_t - t v   (follow the current velocity to t = 0)
            traj.append({"t": t, "x_t": x.cpu(), "x0_pred": (x - t * v).cpu()})
        # Euler: x_s = x_t - h v(x_t, t)
        x_euler = x - h * v
        if method == "heun":
            # Heun: x_s = x_t - h/2 (v(x_t, t) + v(x_euler, s))
            x = x - 0.5 * h * (v + vel(x_euler, s))
        else:
            x = x_euler
    if return_trajectory:
        traj.append({"t": -1, "x_t": x.cpu(), "x0_pred": x.cpu()})
        return x, traj
    return x


def train_flow(model: nn.Module, data: torch.Tensor, steps: int, batch_size: int, lr: float,
               t_sampling: str = "logit_normal", time_scale: float = FLOW_TIME_SCALE, **kwargs):
    r"""Train a velocity model with :func:`flow_matching_loss`; return ``(ema_model, history)``.

    Every other argument (``cond``, ``p_uncond``, ``ema_decay``, ``generator``,
    learning-rate schedule, ...) is that of :func:`train_diffusion`, which runs the loop.
    """
    def loss_fn(m, x0, c, p, g):
        return flow_matching_loss(m, x0, c, p, g, t_sampling=t_sampling, time_scale=time_scale)

    kwargs.setdefault("desc", "flow matching")
    return train_diffusion(model, data, None, steps, batch_size, lr, loss_fn=loss_fn, **kwargs)


# ---------------------------------------------------------------------------
# Latent standardisation: what every diffusion model of the series sees
# ---------------------------------------------------------------------------

class LatentStandardizer:
    r"""Standardisation of latents before diffusion: :math:`u = (z - \bar z) / s`, and back.

    Diffusion assumes data of about unit scale (its noise is :math:`\mathcal N(0, I)`);
    the anchors' users report collapse when latents are not standardised. Flat latents
    (N, L) get one mean :math:`\bar z` and spread :math:`s` per dimension, shaped (L,);
    spatial codes (N, C, H, W) one per *channel* (over samples and positions), shaped
    (C, 1, 1) to broadcast. :math:`s` is the standard deviation, floored at ``eps`` so
    a dead dimension is not blown up. Both stories use it: the weight VAE stores its
    standardiser in its artifact (:func:`helpers.vae.save_vae`), the image notebooks fit
    one on the training codes.
    """

    def __init__(self, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None):
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, z: torch.Tensor, eps: float = 1e-6) -> "LatentStandardizer":
        """A standardiser fitted on latents (N, L) or codes (N, C, H, W), N >= 2."""
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
        r""":math:`u = (z - \bar z) / s` (on ``z``'s device)."""
        self._fitted()
        return (z - self.mean.to(z)) / self.scale.to(z)

    def unstandardize(self, u: torch.Tensor) -> torch.Tensor:
        r""":math:`z = \bar z + s\,u` (on ``u``'s device)."""
        self._fitted()
        return u * self.scale.to(u) + self.mean.to(u)

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors to store with a model: ``mean`` and ``scale``."""
        self._fitted()
        return {"mean": self.mean.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state(cls, state) -> "LatentStandardizer":
        return cls(mean=state["mean"].to(torch.float32), scale=state["scale"].to(torch.float32))
