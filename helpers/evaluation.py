r"""Evaluating generated networks (notebook 05): accuracy, error-set IoU novelty, cheap baselines, the frontier.

Networks are flat raw weight vectors ``(K, D)`` with the architecture ``spec`` of :mod:`helpers.classifiers`;
novelty is a network's highest IoU of error sets with any training checkpoint (p-diff, Zeng et al. 2025).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import classifiers, runtime, weights


def _check_vectors(vectors: torch.Tensor, name: str = "vectors") -> torch.Tensor:
    vectors = torch.as_tensor(vectors)
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.dim() != 2:
        raise ValueError(f"{name}: expected weight vectors of shape (K, D); got {tuple(vectors.shape)}")
    return vectors.float()


def predict_labels(vectors: torch.Tensor, spec, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels (K, N) of K networks (raw vectors of ``spec``) on the inputs ``x``."""
    return classifiers.predict_vectors(_check_vectors(vectors), spec, x)


def accuracies(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy in % of each row of predictions ``preds`` (K, N) against labels ``y`` (N,)."""
    return (preds == y.unsqueeze(0)).float().mean(dim=1) * 100.0


def summarize_accuracies(acc, bar: float = 95.0) -> dict[str, float]:
    """Median (``np.median``), mean, min, max (%), the fractions above 95 % and above ``bar`` %, and the count."""
    a = np.asarray(torch.as_tensor(acc, dtype=torch.float64)).ravel()
    if a.size == 0:
        raise ValueError("summarize_accuracies: expected at least one accuracy, found none")
    return {"median": float(np.median(a)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max()), "frac_above_95": float((a > 95.0).mean()),
            "frac_above_bar": float((a > bar).mean()), "n": int(a.size)}


# --- Novelty: error-set similarity and weight-space distance ---
def error_sets(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wrong-prediction masks ``E`` (K, N) bool: ``E[k, n] = preds[k, n] != y[n]``."""
    preds = torch.as_tensor(preds)
    if preds.dim() == 1:
        preds = preds.unsqueeze(0)
    if preds.shape[-1] != y.shape[0]:
        raise ValueError(f"error_sets: predictions cover {preds.shape[-1]} samples but there are {y.shape[0]} labels")
    return preds != y.unsqueeze(0)


def iou_matrix(err_a: torch.Tensor, err_b: torch.Tensor) -> torch.Tensor:
    """IoU of the error sets of every pair, (K, M) in [0, 1]; two empty error sets have IoU 1."""
    if err_a.shape[-1] != err_b.shape[-1]:
        raise ValueError(f"iou_matrix: error sets over different test sets "
                         f"({err_a.shape[-1]} vs {err_b.shape[-1]} samples)")
    a, b = err_a.to(torch.float64), err_b.to(torch.float64)
    # |E_k ∩ E_m| = (A B^T)_km
    inter = a @ b.T
    # |E_k ∪ E_m| = |E_k| + |E_m| - |E_k ∩ E_m|
    union = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter)).float()


def max_similarity(gen_err: torch.Tensor, train_err: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Each model's highest IoU with any checkpoint (K,); ``exclude`` (K, M) bool marks pairs to skip."""
    iou = iou_matrix(gen_err, train_err)
    if exclude is not None:
        iou = iou.masked_fill(exclude, float("-inf"))
    return iou.max(dim=1).values


def mean_pairwise_iou(err: torch.Tensor) -> float:
    """Mean IoU over all pairs of distinct models of one group (K >= 2)."""
    if len(err) < 2:
        raise ValueError(f"mean_pairwise_iou needs at least 2 models, got {len(err)}")
    return iou_matrix(err, err)[~torch.eye(len(err), dtype=torch.bool)].mean().item()


def pairwise_rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_k - b_m||_2 / sqrt(D)`` for every pair (K, M); identical rows are at exactly 0."""
    d = torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return (d / math.sqrt(a.shape[-1])).float()


def _norm(vectors, normalizer):
    return vectors if normalizer is None else normalizer.normalize(vectors)


# --- Baselines: cheap ways to get "new" networks from the checkpoints ---
def noise_baseline(train_vectors: torch.Tensor, n: int, sigma: float, normalizer=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``n`` random checkpoints plus noise of scale σ in normalised units: :math:`\mathrm{denorm}(\mathrm{norm}(w_i) + \sigma\varepsilon)`."""
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    idx = torch.randint(len(train_vectors), (n,), generator=generator)
    z = _norm(train_vectors[idx], normalizer)
    z = z + sigma * torch.randn(z.shape, generator=generator)
    return z if normalizer is None else normalizer.denormalize(z)


def soup_baseline(train_vectors: torch.Tensor, n: int, k: int = 16,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` soups, each the average of ``k`` distinct random checkpoints (all if fewer)."""
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    k = min(k, len(train_vectors))
    # one random k-subset per soup: the first k of a random permutation of each row
    idx = torch.rand((n, len(train_vectors)), generator=generator).argsort(dim=1)[:, :k]
    return train_vectors[idx].mean(dim=1)


def gaussian_baseline(train_vectors: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``n`` samples of a per-coordinate Gaussian fitted to the checkpoints: :math:`\mu_d + s_d\varepsilon_d`."""
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    mu, s = train_vectors.mean(dim=0), train_vectors.std(dim=0, unbiased=len(train_vectors) > 1)
    return mu + s * torch.randn((n, train_vectors.shape[1]), generator=generator)


def latent_noise_baseline(latents: torch.Tensor, n: int, scale: float, decode,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``n`` random standardised training latents plus noise, decoded: :math:`\mathrm{dec}(u_i + s\varepsilon)`."""
    if latents.ndim != 2 or len(latents) == 0:
        raise ValueError(f"latents must be a non-empty (M, L) tensor of standardised latents; "
                         f"got shape {tuple(latents.shape)}")
    idx = torch.randint(len(latents), (n,), generator=generator)
    u = latents[idx] + float(scale) * torch.randn((n, latents.shape[1]), generator=generator)
    return _check_vectors(decode(u), "decoded latents")


# --- All methods side by side, and the frontier of the cheap baselines ---
def evaluate_methods(methods: Mapping[str, torch.Tensor], train_vectors: torch.Tensor, spec,
                     x_test: torch.Tensor, y_test: torch.Tensor, normalizer=None,
                     train_preds: torch.Tensor | None = None) -> list[dict]:
    """One row per method: ``name, n, mean, median, best, worst`` (%), mean ``max_iou`` and ``nearest_dist``,
    ``copies`` and per network ``accs``, ``max_ious``, ``dists`` (the checkpoints against the *other* ones)."""
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    if train_preds is None:
        train_preds = predict_labels(train_vectors, spec, x_test)
    train_err, zt = error_sets(train_preds, y_test), _norm(train_vectors, normalizer)
    rows = []
    for name, vectors in methods.items():
        vectors = _check_vectors(vectors, name)
        if vectors.shape[1] != train_vectors.shape[1]:
            raise ValueError(f"method {name!r}: vectors of length {vectors.shape[1]}, expected "
                             f"{train_vectors.shape[1]} (the checkpoints' length)")
        is_reference = vectors.shape == train_vectors.shape and torch.equal(vectors, train_vectors)
        preds = train_preds if is_reference else predict_labels(vectors, spec, x_test)
        accs = accuracies(preds, y_test)
        dist = pairwise_rms_distance(_norm(vectors, normalizer), zt)
        self_pairs = torch.eye(len(vectors), dtype=torch.bool) if is_reference else None
        max_iou = max_similarity(error_sets(preds, y_test), train_err, exclude=self_pairs)
        if is_reference:
            dist = dist.masked_fill(self_pairs, float("inf"))
        nearest = dist.min(dim=1).values
        s = summarize_accuracies(accs)
        rows.append({"name": name, "n": len(vectors), "mean": s["mean"], "median": s["median"], "best": s["max"],
                     "worst": s["min"], "max_iou": max_iou.mean().item(), "nearest_dist": nearest.mean().item(),
                     "copies": int((nearest == 0).sum()), "accs": accs, "max_ious": max_iou, "dists": nearest})
    return rows


def point(vectors: torch.Tensor, spec, x: torch.Tensor, y: torch.Tensor, train_err: torch.Tensor) -> dict:
    """One method as a point of the frontier: ``mean_acc`` (%), ``max_iou`` (mean), ``accs``, ``max_ious``."""
    preds = predict_labels(_check_vectors(vectors), spec, x)
    accs, ious = accuracies(preds, y), max_similarity(error_sets(preds, y), train_err)
    return {"mean_acc": accs.mean().item(), "max_iou": ious.mean().item(), "accs": accs, "max_ious": ious}


def baseline_curve(kind: str, values: Sequence[float], train_vectors: torch.Tensor, n: int, spec,
                   x: torch.Tensor, y: torch.Tensor, train_err: torch.Tensor, normalizer=None,
                   seed: int = 0, transform=None, latent=None) -> list[dict]:
    """One :func:`point` (with ``"value"``) per knob value of ``"noise"`` (σ), ``"soup"`` (k) or ``"latent noise"``
    (s; ``latent = (latents, decode)``), seeded ``seed + 1000 i``; ``transform`` maps the networks first."""
    if kind not in ("noise", "soup", "latent noise"):
        raise ValueError(f"unknown baseline curve {kind!r}; expected 'noise', 'soup' or 'latent noise'")
    if kind == "latent noise" and latent is None:
        raise ValueError("the 'latent noise' curve needs latent=(training latents, decode function)")
    rows = []
    for i, v in enumerate(values):
        g = torch.Generator().manual_seed(seed + 1000 * i)
        if kind == "noise":
            vec = noise_baseline(train_vectors, n, float(v), normalizer, g)
        elif kind == "soup":
            vec = soup_baseline(train_vectors, n, int(v), g)
        else:
            vec = latent_noise_baseline(latent[0], n, float(v), latent[1], g)
        rows.append({"value": v, **point(vec if transform is None else transform(vec), spec, x, y, train_err)})
    return rows


def curve_accuracy_at(curve: Sequence[Mapping], max_iou: float) -> float:
    """A curve's accuracy at a mean max IoU, linearly interpolated, held at its end points outside its range."""
    pts = sorted((float(r["max_iou"]), float(r["mean_acc"])) for r in curve)
    if not pts:
        raise ValueError("curve_accuracy_at needs a curve with at least one point")
    return float(np.interp(float(max_iou), [p[0] for p in pts], [p[1] for p in pts]))


def frontier_margin(curve: Sequence[Mapping], mean_acc: float, max_iou: float) -> float:
    """Points above the curve at the same novelty: ``mean_acc - curve_accuracy_at(curve, max_iou)``."""
    return float(mean_acc) - curve_accuracy_at(curve, max_iou)


def frontier(train_vectors: torch.Tensor, methods: Mapping[str, torch.Tensor], spec, x: torch.Tensor,
             y: torch.Tensor, normalizer=None, sigmas: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
             soup_sizes: Sequence[int] = (2, 4, 8, 16), n: int = 20, seed: int = 0,
             latent=None, latent_scales: Sequence[float] = ()) -> dict:
    """The frontier of one zoo: ``curves`` (noise, soup, latent noise), ``points`` (the checkpoints and every
    method), ``margins`` over the noise curve, ``latent_margins`` over the latent-noise one, ``train_err``."""
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    train_preds = predict_labels(train_vectors, spec, x)
    train_err, accs = error_sets(train_preds, y), accuracies(train_preds, y)
    self_iou = max_similarity(train_err, train_err, exclude=torch.eye(len(train_err), dtype=torch.bool))
    points = {"checkpoints": {"mean_acc": accs.mean().item(), "max_iou": self_iou.mean().item(),
                              "accs": accs, "max_ious": self_iou}}
    points.update({name: point(v, spec, x, y, train_err) for name, v in methods.items()})
    curves = {"noise": baseline_curve("noise", sigmas, train_vectors, n, spec, x, y, train_err, normalizer, seed),
              "soup": baseline_curve("soup", soup_sizes, train_vectors, n, spec, x, y, train_err, None, seed + 1)}
    latent_margins = {}
    if latent is not None and len(latent_scales):
        curves["latent noise"] = baseline_curve("latent noise", latent_scales, train_vectors, n, spec, x, y,
                                                train_err, seed=seed + 2, latent=latent)
        latent_margins = {k: frontier_margin(curves["latent noise"], p["mean_acc"], p["max_iou"]) for k, p in points.items()}
    margins = {k: frontier_margin(curves["noise"], p["mean_acc"], p["max_iou"]) for k, p in points.items()}
    return {"curves": curves, "points": points, "margins": margins, "latent_margins": latent_margins,
            "train_err": train_err}


# --- Fine-tuning from given weights ---
def finetune_vectors(vectors: torch.Tensor, spec, x: torch.Tensor, y: torch.Tensor, steps: int,
                     lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """K networks trained ``steps`` more Adam steps at once (data order seeded ``seed + k``): (K, D) on the CPU."""
    vectors = _check_vectors(vectors)
    if steps <= 0:
        return vectors.clone()
    params = {k: v.clone().contiguous() for k, v in weights.unflatten(vectors.clone(), spec).items()}
    classifiers.train_stacked(params, spec, x, y, epochs=steps / (len(x) // batch_size), batch_size=batch_size,
                              lr=lr, generators=[torch.Generator().manual_seed(seed + i) for i in range(len(vectors))])
    return torch.cat([params[n].detach().reshape(len(vectors), -1).cpu() for n, _ in classifiers.param_shapes(spec)], 1)


def finetune_curves(start_vectors: Mapping[str, torch.Tensor], spec, data: Sequence[torch.Tensor],
                    steps: int = 300, lr: float = 1e-3, batch_size: int = 128,
                    eval_every: int = 25, seed: int = 0, progress: bool = True) -> dict:
    """Adam from several starts (name -> vector (D,)) on the same batches, ``data = (x_train, y_train,
    x_test, y_test)``: per name ``loss`` (each step), ``eval_steps`` and ``test_acc`` (%)."""
    dev = runtime.device()
    x_train, y_train, x_test, y_test = data
    batches = torch.randint(len(x_train), (steps, batch_size), generator=torch.Generator().manual_seed(seed))
    eval_at = sorted(set(range(0, steps + 1, max(1, eval_every))) | {steps})
    histories = {}
    for name, vector in start_vectors.items():
        model = weights.load_into_model(torch.as_tensor(vector).float().flatten(), spec).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses, accs = [], []
        for step in (runtime.progress(range(steps + 1), desc=f"fine-tune from {name}") if progress else range(steps + 1)):
            if step in eval_at:
                with torch.no_grad():
                    pred = torch.cat([model.eval()(x_test[i:i + 4096].to(dev)).argmax(-1).cpu()
                                      for i in range(0, len(x_test), 4096)])
                accs.append(((pred == y_test).float().mean() * 100).item())
            if step == steps:
                break
            idx = batches[step]
            loss = F.cross_entropy(model.train()(x_train[idx].to(dev)), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        histories[name] = {"loss": losses, "eval_steps": eval_at, "test_acc": accs}
    return histories
