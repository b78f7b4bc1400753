r"""Classification by Bayes' rule, :math:`\hat y=\arg\max_y \log p(x\mid y)+\log p(y)`, with a class-conditional
generator's estimates of :math:`\log p(x\mid y)` (notebook 06 writes both from scratch and checks them against these):
the denoising error ("diffusion classifier", Li et al. 2023) and the flow's ODE likelihood (Hutchinson divergence).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import diffusion


@torch.no_grad()
def denoising_scores(model: nn.Module, kind: str, x: torch.Tensor, n_classes: int = 10,
                     n_samples: int = 16, sched=None, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    r"""Minus the mean denoising error of each class (N, n_classes): the ε-error at steps
    :math:`\lfloor(k+\tfrac12)T/K\rfloor` (``"ddpm"``) or the velocity error at :math:`t_k=(k+\tfrac12)/K`
    (``"flow"``), with noise drawn from ``seed`` and shared by all classes."""
    if kind not in ("ddpm", "flow"):
        raise ValueError(f"unknown generator kind {kind!r}: expected 'flow' or 'ddpm'")
    if kind == "ddpm" and sched is None:
        raise ValueError("kind='ddpm' needs the noise schedule `sched`")
    device, K = x.device, int(n_samples)
    gen = torch.Generator().manual_seed(seed)
    if kind == "ddpm":
        ts = ((torch.arange(K, dtype=torch.float64) + 0.5) * sched.T / K).floor().long().to(device)
    else:
        ts = ((torch.arange(K, dtype=torch.float32) + 0.5) / K).to(device)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        B, shape = xb.shape[0], tuple(xb.shape[1:])
        eps = torch.randn((B, K) + shape, generator=gen).to(device).reshape(B * K, *shape)
        x0 = xb.repeat_interleave(K, dim=0)
        t = ts.repeat(B)
        if kind == "ddpm":
            x_t, target, t_in = diffusion.q_sample(sched.to(device), x0, t, eps), eps, t
        else:
            # x_t = (1 - t) x_0 + t \epsilon, target velocity \epsilon - x_0
            x_t, target, t_in = diffusion.flow_interpolate(x0, t, eps), eps - x0, t * diffusion.FLOW_TIME_SCALE
        # every noisy point paired with every class
        ys = torch.arange(n_classes, device=device).repeat(B * K)
        pred = model(x_t.repeat_interleave(n_classes, dim=0), t_in.repeat_interleave(n_classes), cond=ys)
        err = ((pred - target.repeat_interleave(n_classes, dim=0)) ** 2).reshape(B, K, n_classes, -1).sum(-1)
        # score_y = - (1/K) \sum_k || target_k - model(x_{t_k}, t_k, y) ||^2
        out.append(-err.mean(1).cpu())
    return torch.cat(out)


def flow_log_likelihood(model: nn.Module, x: torch.Tensor, cond: torch.Tensor, steps: int = 16,
                        probes: int = 1, exact: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(log_likelihood, shortcut)`` of rows ``x`` (B, d) under the flow given ``cond`` (B,): Heun steps from
    t=0 to 1 of :math:`dx/dt=v` and :math:`d\ell/dt=\nabla\!\cdot v`, the divergence by Hutchinson (``probes``
    Rademacher vectors from ``seed``) or ``exact``; ``shortcut`` is :math:`-\tfrac12\lVert x_1\rVert^2`."""
    if x.ndim != 2:
        raise ValueError(f"expected flat codes (B, d); got shape {tuple(x.shape)}")
    B, d = x.shape
    if exact:
        vs = torch.eye(d, device=x.device)[:, None, :].expand(d, B, d)
    else:
        # Rademacher probes: \varepsilon_i = ±1
        gen = torch.Generator().manual_seed(seed)
        vs = (torch.randint(0, 2, (probes, B, d), generator=gen).float() * 2 - 1).to(x.device)

    def f(z, t):
        """Velocity and divergence estimate at (z, t)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            v = model(z, torch.full((B,), t * diffusion.FLOW_TIME_SCALE, device=z.device), cond=cond)
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
    # log p_0(x) = log N(x_1; 0, I) + \int_0^1 div v(x_t, t) dt
    return (-0.5 * sq - 0.5 * d * math.log(2 * math.pi) + logdet).detach(), (-0.5 * sq).detach()


def bayes_predict(log_lik: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    r"""Bayes' rule: :math:`\hat y = \arg\max_y \log p(x\mid y) + \log p(y)` (uniform prior if None)."""
    return (log_lik if log_prior is None else log_lik + log_prior[None]).argmax(1)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in %."""
    return 100.0 * (torch.as_tensor(pred) == torch.as_tensor(y)).float().mean().item()


def confusion_matrix(pred: torch.Tensor, y: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    idx = torch.as_tensor(y).long() * n_classes + torch.as_tensor(pred).long()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
