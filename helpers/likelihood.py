r"""Classification by Bayes' rule with a class-conditional generator.

A class-conditional generative model gives (an estimate of) :math:`\log p(x\mid y)`
for every class :math:`y`. Bayes' rule turns it into a classifier:

.. math:: p(y\mid x) = \frac{p(x\mid y)\,p(y)}{\sum_{y'} p(x\mid y')\,p(y')},
          \qquad \hat y = \arg\max_y \big[\log p(x\mid y) + \log p(y)\big].

Here :math:`x` is the VAE code of an image (standardised), so every estimate
below is of the latent density. Three estimators of :math:`\log p(x\mid y)`:

1. **Denoising error** (the "diffusion classifier", Li et al. 2023):
   :func:`denoising_scores`. The diffusion ELBO is, up to constants and a
   per-timestep weight, minus the expected denoising error, so

   .. math:: \log p(x\mid y) \approx -\frac1K\sum_{k=1}^K
             \big\lVert \epsilon_k-\epsilon_\theta(x_{t_k}, t_k, y)\big\rVert^2

   with :math:`K` noise samples :math:`(t_k,\epsilon_k)` at evenly spaced
   :math:`t_k`, *the same for every class* (so the noise cancels in the
   comparison). For a flow-matching model the error is that of the velocity,
   :math:`\lVert(\epsilon_k-x)-v_\theta(x_{t_k},t_k,y)\rVert^2`, which is the
   same quantity in other units.
2. **The flow's exact likelihood** (:func:`flow_log_likelihood`): run the ODE
   :math:`dx/dt=v_\theta(x,t,y)` from the data point (:math:`t=0`) to noise
   (:math:`t=1`); by the instantaneous change of variables (Chen et al. 2018),

   .. math:: \log p_0(x) = \log \mathcal N(x_1; 0, I) + \int_0^1 \nabla\!\cdot v_\theta(x_t, t, y)\,dt ,

   with the divergence estimated by Hutchinson's trick,
   :math:`\nabla\!\cdot v \approx \varepsilon^\top \frac{\partial v}{\partial x}\varepsilon`,
   :math:`\varepsilon` Rademacher (one vector-Jacobian product per probe).
3. **The shortcut** of the seed: the same ODE, scored by :math:`-\tfrac12\lVert x_1\rVert^2`
   alone. It drops the divergence term (how much the flow compresses volume), so it is
   not the model's likelihood; :func:`flow_log_likelihood` returns both, from one
   ODE solve, to show what the missing term costs.

A cheap baseline needs no generator: a Gaussian per class in the latent (QDA,
:func:`fit_gaussians`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import diffusion

__all__ = ["denoising_scores", "flow_log_likelihood", "fit_gaussians", "gaussian_log_likelihood",
           "bayes_predict", "accuracy", "confusion_matrix"]


def _class_batch(x: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of ``x`` (B, ...) paired with every class: ``(x repeated (B*C, ...), labels (B*C,))``."""
    B = x.shape[0]
    xs = x.repeat_interleave(n_classes, dim=0)
    ys = torch.arange(n_classes, device=x.device).repeat(B)
    return xs, ys


@torch.no_grad()
def denoising_scores(model: nn.Module, kind: str, x: torch.Tensor, n_classes: int = 10,
                     n_samples: int = 16, sched=None, seed: int = 0, batch_size: int = 500,
                     time_scale: float = diffusion.FLOW_TIME_SCALE) -> torch.Tensor:
    r"""Minus the mean denoising error for each class: scores (N, n_classes), higher = more likely.

    ``kind`` ``"ddpm"`` (ε-error at steps evenly spread over ``[0, T)`` of ``sched``)
    or ``"flow"`` (velocity error at times :math:`t_k=(k+\tfrac12)/K`). The noise
    :math:`\epsilon_k` of each image is drawn once (CPU generator, ``seed``) and
    shared by all classes.
    """
    if kind not in ("ddpm", "flow"):
        raise ValueError(f"unknown generator kind {kind!r}: expected 'flow' or 'ddpm'")
    if kind == "ddpm" and sched is None:
        raise ValueError("kind='ddpm' needs the noise schedule `sched`")
    device = x.device
    K = int(n_samples)
    gen = torch.Generator().manual_seed(seed)
    if kind == "ddpm":
        sched = sched.to(device)
        # t_k evenly spread over the T steps: round((k + 1/2) T / K)
        ts = ((torch.arange(K, dtype=torch.float64) + 0.5) * sched.T / K).floor().long().to(device)
    else:
        # t_k = (k + 1/2) / K
        ts = ((torch.arange(K, dtype=torch.float32) + 0.5) / K).to(device)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        B = xb.shape[0]
        # (B, K, ...) noise, shared across the classes
        eps = torch.randn((B, K) + tuple(xb.shape[1:]), generator=gen).to(device)
        x0 = xb[:, None].expand_as(eps)
        t = ts[None].expand(B, K).reshape(-1)
        x0f, epsf = x0.reshape(B * K, *xb.shape[1:]), eps.reshape(B * K, *xb.shape[1:])
        if kind == "ddpm":
            x_t = diffusion.q_sample(sched, x0f, t, epsf)
            target, t_in = epsf, t
        else:
            x_t = diffusion.flow_interpolate(x0f, t, epsf)
            # velocity target \epsilon - x_0
            target, t_in = epsf - x0f, t * time_scale
        xs, ys = _class_batch(x_t, n_classes)
        pred = model(xs, t_in.repeat_interleave(n_classes), cond=ys)
        err = ((pred - target.repeat_interleave(n_classes, dim=0)) ** 2).reshape(B, K, n_classes, -1).sum(-1)
        # score_y = - (1/K) \sum_k || target_k - model(x_{t_k}, t_k, y) ||^2
        out.append(-err.mean(1).cpu())
    return torch.cat(out)


def flow_log_likelihood(model: nn.Module, x: torch.Tensor, cond: torch.Tensor, steps: int = 16,
                        probes: int = 1, exact: bool = False, seed: int = 0,
                        time_scale: float = diffusion.FLOW_TIME_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(log_likelihood, shortcut)`` of rows ``x`` (B, d) under the flow conditioned on ``cond`` (B,).

    Integrates :math:`dx/dt=v(x,t,c)` and :math:`d\ell/dt=\nabla\!\cdot v` from
    :math:`t=0` to :math:`1` with Heun steps (``steps``). The divergence is
    Hutchinson's estimate with ``probes`` Rademacher vectors (fixed along the
    path, from ``seed``), or exact (one vector-Jacobian product per dimension) with
    ``exact=True``. ``shortcut`` is :math:`-\tfrac12\lVert x_1\rVert^2`.
    """
    if x.ndim != 2:
        raise ValueError(f"expected flat codes (B, d); got shape {tuple(x.shape)}")
    B, d = x.shape
    gen = torch.Generator().manual_seed(seed)
    if exact:
        vs = torch.eye(d, device=x.device)[:, None, :].expand(d, B, d)
    else:
        # Rademacher probes: \varepsilon_i = ±1
        vs = (torch.randint(0, 2, (probes, B, d), generator=gen).float() * 2 - 1).to(x.device)

    def f(z, t):
        """Velocity and its divergence estimate at (z, t)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            v = model(z, torch.full((B,), t * time_scale, device=z.device), cond=cond)
            div = torch.zeros(B, device=z.device)
            for k in range(vs.shape[0]):
                # \varepsilon^T (\partial v / \partial z) \varepsilon, one vector-Jacobian product
                (g,) = torch.autograd.grad(v, z, vs[k], retain_graph=k + 1 < vs.shape[0])
                div = div + (g * vs[k]).sum(-1)
        # exact: the sum over unit vectors is the trace; Hutchinson: the mean over probes
        return v.detach(), div if exact else div / vs.shape[0]

    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    z, logdet = x.detach().clone(), torch.zeros(B, device=x.device)
    for i in range(steps):
        h = ts[i + 1] - ts[i]
        v1, d1 = f(z, ts[i])
        v2, d2 = f(z + h * v1, ts[i + 1])
        # Heun: z_{t+h} = z_t + h/2 (v_1 + v_2);  \int div v dt likewise
        z = z + 0.5 * h * (v1 + v2)
        logdet = logdet + 0.5 * h * (d1 + d2)
    sq = (z ** 2).sum(-1)
    # log N(x_1; 0, I) = -1/2 ||x_1||^2 - d/2 log(2 pi)
    log_pz1 = -0.5 * sq - 0.5 * d * math.log(2 * math.pi)
    # log p_0(x) = log p_1(x_1) + \int_0^1 div v(x_t, t) dt
    return (log_pz1 + logdet).detach(), (-0.5 * sq).detach()


def flow_class_loglik(model: nn.Module, x: torch.Tensor, n_classes: int = 10, steps: int = 16,
                      probes: int = 1, exact: bool = False, seed: int = 0,
                      batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`flow_log_likelihood` for every row of ``x`` and every class: two (N, n_classes) tensors.

    The Hutchinson probes of an image are the same for every class (same ``seed`` per batch).
    """
    ll, sc = [], []
    for i in range(0, len(x), batch_size):
        xs, ys = _class_batch(x[i:i + batch_size], n_classes)
        a, b = flow_log_likelihood(model, xs, ys, steps, probes, exact, seed + i)
        ll.append(a.reshape(-1, n_classes).cpu())
        sc.append(b.reshape(-1, n_classes).cpu())
    return torch.cat(ll), torch.cat(sc)


def fit_gaussians(z: torch.Tensor, y: torch.Tensor, n_classes: int = 10, reg: float = 1e-3):
    r"""A Gaussian :math:`\mathcal N(\mu_y, \Sigma_y + \lambda I)` per class (QDA): ``(means (C, d), covs (C, d, d))``."""
    z = z.double()
    means = torch.stack([z[y == c].mean(0) for c in range(n_classes)])
    covs = torch.stack([torch.cov(z[y == c].T) + reg * torch.eye(z.shape[1], dtype=z.dtype)
                        for c in range(n_classes)])
    return means, covs


def gaussian_log_likelihood(z: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\mathcal N(z;\mu_y,\Sigma_y)` for every row and class: (N, C)."""
    dist = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    return dist.log_prob(z.double()[:, None, :]).float()


def bayes_predict(log_lik: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    r"""Bayes' rule: :math:`\hat y = \arg\max_y \log p(x\mid y) + \log p(y)` (uniform prior if None)."""
    scores = log_lik if log_prior is None else log_lik + log_prior[None]
    return scores.argmax(1)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in %."""
    return 100.0 * (torch.as_tensor(pred) == torch.as_tensor(y)).float().mean().item()


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    idx = torch.as_tensor(y).long() * n_classes + torch.as_tensor(pred).long()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
