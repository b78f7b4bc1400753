"""Evaluating generated networks: accuracy, novelty against memorisation, honest baselines.

A generator of network weights is only interesting if it does something that
cheap tricks cannot. The question this module answers is therefore not just
"are the generated networks accurate?" but "are they accurate *and new*?"

Why ask? A 2025 study of four published weight generators (the memorisation
study, boyazeng/weight_memorization) found that they mostly reproduce or
interpolate their training checkpoints, and that three cheap baselines land in
the same accuracy/novelty region:

* **noise**: a training checkpoint plus Gaussian noise, in normalised units,
  :math:`\\tilde w = \\mathrm{denorm}(\\mathrm{norm}(w_i) + \\sigma\\,\\varepsilon)`,
  :math:`\\sigma \\approx 0.06\\text{--}0.12`;
* **soup**: the average of :math:`k = 16` random checkpoints,
  :math:`\\tilde w = \\frac1k \\sum_{j \\in S} w_j`;
* **gaussian**: a per-coordinate Gaussian fitted to the checkpoints,
  :math:`\\tilde w_d \\sim \\mathcal N(\\mu_d, s_d^2)`.

Every claim about our generator is measured against these (and against the
training checkpoints themselves, the VAE prior and direct weight diffusion). One
more cheap baseline uses the generator's own autoencoder:

* **latent noise**: a training checkpoint's latent plus Gaussian noise, decoded,
  :math:`\\tilde w = \\mathrm{dec}(u_i + s\\,\\varepsilon)` with :math:`u_i` a standardised
  training latent; it asks what the *diffusion model* adds to the decoder.

Novelty is measured the way p-diff and the memorisation study do it, in
*function space*: for a model :math:`f` let :math:`E(f)` be the set of test
images it gets wrong. The similarity of two models is the intersection over
union of their error sets,

.. math::  \\mathrm{IoU}(f, g) = \\frac{|E(f) \\cap E(g)|}{|E(f) \\cup E(g)|},

and a generated model's *maximum similarity* is its IoU with the most similar
training checkpoint. A copy of a checkpoint scores 1; an independently trained
network of the same accuracy scores much lower. Beside it we report the
distance to the nearest checkpoint in normalised weight space (root mean
square over coordinates, so that it reads in the same units as the noise
baseline's :math:`\\sigma`).

Then two uses of generated weights: **ensembles** (average the predicted
probabilities of several networks, :math:`\\bar p(y|x) = \\frac1K \\sum_k
p_k(y|x)`) and **fine-tuning** (a few hundred optimiser steps starting from a
generated network, against the same from a random initialisation and from a
checkpoint).

Nothing here runs on import. Networks are handled as flat raw weight vectors
``(K, D)`` together with the architecture ``spec`` of :mod:`helpers.classifiers`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import classifiers, runtime, weights
from .plots import new_axes

# ---------------------------------------------------------------------------
# Predictions and accuracies
# ---------------------------------------------------------------------------


def _check_vectors(vectors: torch.Tensor, name: str = "vectors") -> torch.Tensor:
    vectors = torch.as_tensor(vectors)
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.dim() != 2:
        raise ValueError(f"{name}: expected weight vectors of shape (K, D); got {tuple(vectors.shape)}")
    return vectors.float()


def predict_labels(vectors: torch.Tensor, spec, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels of K networks on N inputs: LongTensor (K, N).

    ``vectors`` (K, D) are raw weight vectors of the architecture ``spec``;
    ``x`` is the (normalised, float) input batch.
    """
    return classifiers.predict_vectors(_check_vectors(vectors), spec, x)


@torch.no_grad()
def predict_probs(vectors: torch.Tensor, spec, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Softmax probabilities of K networks on N inputs: (K, N, C).

    ``p_k(y | x) = softmax(f_{w_k}(x))``, all K networks in one stacked
    forward per batch of images (:func:`helpers.classifiers.stacked_forward`), on
    :func:`helpers.runtime.device`; returned on the CPU.
    """
    dev = runtime.device()
    vectors = _check_vectors(vectors)
    params = weights.unflatten(vectors.to(dev), spec)        # name -> (K, ...)
    return torch.cat([F.softmax(classifiers.stacked_forward(params, x[i:i + batch_size].to(dev), spec,
                                                            shared_input=True), dim=-1).cpu()
                      for i in range(0, len(x), batch_size)], dim=1)


def accuracies(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy in % of each row of predictions ``preds`` (K, N) against labels ``y`` (N,)."""
    return (preds == y.unsqueeze(0)).float().mean(dim=1) * 100.0


def summarize_accuracies(acc, bar: float = 95.0) -> dict[str, float]:
    """Median, mean, min, max (in %), the fraction above 95 % and above ``bar`` % (the dataset's
    bar, ``config.dataset_info(...).acc_bar``), and the count of a set of accuracies.

    The one accuracy summary of the weight story (notebooks 03 and 05). The median
    is the true median: the mean of the two middle values for an even count
    (``np.median``; ``torch.median`` would take the lower one).
    """
    a = np.asarray(torch.as_tensor(acc, dtype=torch.float64)).ravel()
    if a.size == 0:
        raise ValueError("summarize_accuracies: expected at least one accuracy, found none")
    return {"median": float(np.median(a)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max()), "frac_above_95": float((a > 95.0).mean()),
            "frac_above_bar": float((a > bar).mean()), "n": int(a.size)}


# ---------------------------------------------------------------------------
# Novelty: error-set similarity and weight-space distance
# ---------------------------------------------------------------------------


def error_sets(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wrong-prediction masks ``E`` (K, N) bool: ``E[k, n] = (preds[k, n] != y[n])``."""
    preds = torch.as_tensor(preds)
    if preds.dim() == 1:
        preds = preds.unsqueeze(0)
    if preds.shape[-1] != y.shape[0]:
        raise ValueError(f"error_sets: predictions cover {preds.shape[-1]} samples but there are "
                         f"{y.shape[0]} labels")
    return preds != y.unsqueeze(0)


def iou_matrix(err_a: torch.Tensor, err_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of error sets, for every pair: (K, M) in [0, 1].

    ``err_a`` (K, N) and ``err_b`` (M, N) are boolean masks. With A, B as 0/1
    matrices, all intersections are one matrix product:

    ``|E_k ∩ E_m| = (A Bᵀ)_{km}``,  ``|E_k ∪ E_m| = |E_k| + |E_m| - |E_k ∩ E_m|``.

    Two models that make no errors at all have identical (empty) error sets:
    their IoU is defined as 1.
    """
    if err_a.shape[-1] != err_b.shape[-1]:
        raise ValueError(f"iou_matrix: error sets over different test sets "
                         f"({err_a.shape[-1]} vs {err_b.shape[-1]} samples)")
    # float64 keeps the counts exact up to 2^53 samples
    a = err_a.to(torch.float64)
    b = err_b.to(torch.float64)
    # |E_k ∩ E_m| = sum_n A_kn B_mn
    inter = a @ b.T
    # |E_k ∪ E_m| = |E_k| + |E_m| - |E_k ∩ E_m|
    union = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter)).float()


def max_similarity(gen_err: torch.Tensor, train_err: torch.Tensor,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Each model's highest IoU with any training checkpoint: (K,).

    ``max_m IoU(E_k, E_m)``. ``exclude`` (K, M) bool marks pairs to skip, e.g.
    a checkpoint compared with itself when the checkpoints are the method.
    """
    iou = iou_matrix(gen_err, train_err)
    if exclude is not None:
        iou = iou.masked_fill(exclude, float("-inf"))
    return iou.max(dim=1).values


def mean_pairwise_iou(err: torch.Tensor) -> float:
    """Mean IoU over all pairs of distinct models in one group of error sets (K, N), K >= 2.

    E.g. for independently trained networks: the similarity that independent
    training gives, a floor for "new" networks of the same accuracy.
    """
    if len(err) < 2:
        raise ValueError(f"mean_pairwise_iou needs at least 2 models, got {len(err)}")
    iou = iou_matrix(err, err)
    return iou[~torch.eye(len(err), dtype=torch.bool)].mean().item()


def _in_normalized_space(vectors: torch.Tensor, normalizer) -> torch.Tensor:
    return vectors if normalizer is None else normalizer.normalize(vectors)


def pairwise_rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS distance of every pair of rows: ``||a_k - b_m||_2 / sqrt(D)``, (K, M).

    Computed without the ``|a|² + |b|² - 2ab`` shortcut, so identical vectors
    are at distance exactly 0.
    """
    d = torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return (d / math.sqrt(a.shape[-1])).float()


def nearest_checkpoint_distance(vectors: torch.Tensor, train_vectors: torch.Tensor,
                                normalizer=None, exclude_identical: bool = False) -> torch.Tensor:
    """Distance of each vector to its nearest training checkpoint: (K,).

    In normalised weight space (``normalizer.normalize``, per-parameter-tensor
    standardisation) if a normaliser is given, else in raw units; RMS over
    coordinates, ``min_m ||z_k - z_m||_2 / sqrt(D)``, so a checkpoint plus
    noise of scale σ sits at about σ. ``exclude_identical`` skips exact copies
    (distance 0): a checkpoint's distance to the *other* checkpoints.
    """
    z = _in_normalized_space(_check_vectors(vectors), normalizer)
    zt = _in_normalized_space(_check_vectors(train_vectors, "train_vectors"), normalizer)
    d = pairwise_rms_distance(z, zt)
    if exclude_identical:
        d = d.masked_fill(d == 0, float("inf"))
    return d.min(dim=1).values


# ---------------------------------------------------------------------------
# Baselines: cheap ways to get "new" networks from the checkpoints
# ---------------------------------------------------------------------------


def noise_baseline(train_vectors: torch.Tensor, n: int, sigma: float, normalizer=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """n random checkpoints plus Gaussian noise of scale σ in normalised units: raw (n, D).

    ``w̃ = denorm(norm(w_i) + σ ε)``, ``i ~ U{1..M}``, ``ε ~ N(0, I)``. Without
    a normaliser the noise is added in raw units.
    """
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    idx = torch.randint(len(train_vectors), (n,), generator=generator)
    z = _in_normalized_space(train_vectors[idx], normalizer)
    # z̃ = z + σ ε
    z = z + sigma * torch.randn(z.shape, generator=generator)
    return z if normalizer is None else normalizer.denormalize(z)


def soup_baseline(train_vectors: torch.Tensor, n: int, k: int = 16,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """n model soups, each the average of k distinct random checkpoints: (n, D).

    ``w̃ = (1/k) Σ_{j∈S} w_j`` with S a random k-subset (all checkpoints if
    there are fewer than k).
    """
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    m = len(train_vectors)
    k = min(k, m)
    # one random k-subset per soup: the first k of a random permutation of each row
    idx = torch.rand((n, m), generator=generator).argsort(dim=1)[:, :k]
    return train_vectors[idx].mean(dim=1)


def latent_noise_baseline(latents: torch.Tensor, n: int, scale: float, decode,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """n random training latents plus Gaussian noise of scale ``scale``, decoded: raw (n, D).

    ``w̃ = decode(u_i + s ε)``, ``i ~ U{1..M}``, ``ε ~ N(0, I)``; ``latents`` (M, L) are the
    standardised latents of the checkpoints (:func:`helpers.generation.training_latents`) and
    ``decode`` maps (n, L) standardised latents to raw vectors
    (:func:`helpers.vae.decode_to_vectors` with the VAE bound). The noise baseline moved
    into the autoencoder's latent space: the decoder keeps it near networks that work.
    """
    if latents.ndim != 2 or len(latents) == 0:
        raise ValueError(f"latents must be a non-empty (M, L) tensor of standardised latents; "
                         f"got shape {tuple(latents.shape)}")
    idx = torch.randint(len(latents), (n,), generator=generator)
    # ũ = u_i + s ε
    u = latents[idx] + float(scale) * torch.randn((n, latents.shape[1]), generator=generator)
    return _check_vectors(decode(u), "decoded latents")


def gaussian_baseline(train_vectors: torch.Tensor, n: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples of a per-coordinate Gaussian fitted to the checkpoints: (n, D).

    ``w̃_d = μ_d + s_d ε_d`` with ``μ_d``, ``s_d`` the mean and standard
    deviation of coordinate d over the M checkpoints (no correlations kept).
    """
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    mu = train_vectors.mean(dim=0)
    s = train_vectors.std(dim=0, unbiased=len(train_vectors) > 1)
    # w̃ = μ + s ⊙ ε
    return mu + s * torch.randn((n, train_vectors.shape[1]), generator=generator)


# ---------------------------------------------------------------------------
# All methods side by side
# ---------------------------------------------------------------------------


def evaluate_methods(methods: Mapping[str, torch.Tensor], train_vectors: torch.Tensor, spec,
                     x_test: torch.Tensor, y_test: torch.Tensor, normalizer=None,
                     train_preds: torch.Tensor | None = None) -> list[dict]:
    """Accuracy and novelty of every method against the training checkpoints.

    ``methods`` maps a name to raw weight vectors (K, D); ``train_vectors``
    (M, D) are the checkpoints the generator learned from. Returns one row per
    method: ``name, n, mean, median, best, worst`` (accuracy, %), ``max_iou``
    (mean over models of the maximum error-set IoU to any checkpoint),
    ``nearest_dist`` (mean RMS distance to the nearest checkpoint, normalised
    units), and the per-model tensors ``accs``, ``max_ious``, ``dists`` for plots.

    ``copies`` counts exact copies of a checkpoint (distance 0). When a
    method's vectors *are* ``train_vectors`` (the reference row "checkpoints"),
    each checkpoint is compared with the *other* checkpoints, so that row reads
    as "how similar are two checkpoints of our zoo to each other".
    """
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    if train_preds is None:
        train_preds = predict_labels(train_vectors, spec, x_test)
    train_err = error_sets(train_preds, y_test)
    zt = _in_normalized_space(train_vectors, normalizer)
    rows = []
    for name, vectors in methods.items():
        vectors = _check_vectors(vectors, name)
        if vectors.shape[1] != train_vectors.shape[1]:
            raise ValueError(f"method {name!r}: vectors of length {vectors.shape[1]}, expected "
                             f"{train_vectors.shape[1]} (the checkpoints' length)")
        is_reference = vectors.shape == train_vectors.shape and torch.equal(vectors, train_vectors)
        preds = train_preds if is_reference else predict_labels(vectors, spec, x_test)
        accs = accuracies(preds, y_test)
        dist = pairwise_rms_distance(_in_normalized_space(vectors, normalizer), zt)
        # the checkpoints themselves: leave each one out of its own comparison (the diagonal);
        # any other method's exact copies of a checkpoint count as IoU 1, distance 0
        self_pairs = torch.eye(len(vectors), dtype=torch.bool) if is_reference else None
        max_iou = max_similarity(error_sets(preds, y_test), train_err, exclude=self_pairs)
        if is_reference:
            dist = dist.masked_fill(self_pairs, float("inf"))
        nearest = dist.min(dim=1).values
        summary = summarize_accuracies(accs)
        rows.append({"name": name, "n": len(vectors), "mean": summary["mean"], "median": summary["median"],
                     "best": summary["max"], "worst": summary["min"],
                     "max_iou": max_iou.mean().item(), "nearest_dist": nearest.mean().item(),
                     "copies": int((nearest == 0).sum()),
                     "accs": accs, "max_ious": max_iou, "dists": nearest})
    return rows


# ---------------------------------------------------------------------------
# The accuracy-novelty frontier of the cheap baselines
# ---------------------------------------------------------------------------


def point(vectors: torch.Tensor, spec, x: torch.Tensor, y: torch.Tensor, train_err: torch.Tensor) -> dict:
    """One method as a point of the frontier plot: mean accuracy (%) and mean max IoU.

    ``train_err``: the training checkpoints' error sets on the same images
    (:func:`error_sets`). Returns ``{"mean_acc", "max_iou", "accs", "max_ious"}``.
    """
    preds = predict_labels(_check_vectors(vectors), spec, x)
    accs = accuracies(preds, y)
    ious = max_similarity(error_sets(preds, y), train_err)
    return {"mean_acc": accs.mean().item(), "max_iou": ious.mean().item(), "accs": accs, "max_ious": ious}


def baseline_curve(kind: str, values: Sequence[float], train_vectors: torch.Tensor, n: int, spec,
                   x: torch.Tensor, y: torch.Tensor, train_err: torch.Tensor, normalizer=None,
                   seed: int = 0, transform=None, latent=None) -> list[dict]:
    """A cheap baseline swept over its knob: one :func:`point` per value.

    ``kind="noise"``: a checkpoint plus noise of scale σ (``values`` = σ, normalised units);
    ``kind="soup"``: the average of k random checkpoints (``values`` = k);
    ``kind="latent noise"``: a checkpoint's latent plus noise of scale s, decoded
    (``values`` = s, standardised latent units; ``latent = (latents, decode)`` as in
    :func:`latent_noise_baseline`). Each value uses ``n`` networks from its own seeded
    generator. Rows carry ``"value"``. ``transform`` (optional) maps the (n, D) networks
    before they are evaluated, e.g. a few steps of fine-tuning (:func:`finetune_vectors`).
    """
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
        if transform is not None:
            vec = transform(vec)
        rows.append({"value": v, **point(vec, spec, x, y, train_err)})
    return rows


def curve_accuracy_at(curve: Sequence[Mapping], max_iou: float) -> float:
    """The accuracy of a baseline curve at a given mean max IoU, linearly interpolated.

    The curve's points are sorted by IoU. Outside the curve's IoU range the nearest
    end point is used (``np.interp``): since a baseline's accuracy falls as it
    becomes more novel, this *over*-estimates the baseline where the point is more
    novel than any curve point, so a margin computed with it is conservative.
    """
    pts = sorted((float(r["max_iou"]), float(r["mean_acc"])) for r in curve)
    if not pts:
        raise ValueError("curve_accuracy_at needs a curve with at least one point")
    return float(np.interp(float(max_iou), [p[0] for p in pts], [p[1] for p in pts]))


def frontier_margin(curve: Sequence[Mapping], mean_acc: float, max_iou: float) -> float:
    """Points above the baseline curve: ``mean_acc - curve_accuracy_at(curve, max_iou)``.

    > 0: at the same novelty the method is more accurate than the baseline (above its frontier).
    """
    return float(mean_acc) - curve_accuracy_at(curve, max_iou)


def finetune_vectors(vectors: torch.Tensor, spec, x: torch.Tensor, y: torch.Tensor, steps: int,
                     lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """K networks each trained ``steps`` more Adam steps, all at once (own data order each): (K, D).

    The same budget for every method, so "generated + fine-tuning" is compared with
    "noise baseline + the same fine-tuning". Trained on :func:`helpers.runtime.device`
    (:func:`helpers.classifiers.train_stacked`); returned on the CPU.
    """
    vectors = _check_vectors(vectors)
    if steps <= 0:
        return vectors.clone()
    params = {k: v.clone().contiguous() for k, v in weights.unflatten(vectors.clone(), spec).items()}
    per_epoch = len(x) // batch_size
    classifiers.train_stacked(params, spec, x, y, epochs=steps / per_epoch, batch_size=batch_size, lr=lr,
                              generators=[torch.Generator().manual_seed(seed + i) for i in range(len(vectors))])
    return torch.cat([params[n].detach().reshape(len(vectors), -1).cpu() for n, _ in classifiers.param_shapes(spec)], 1)


def frontier(train_vectors: torch.Tensor, methods: Mapping[str, torch.Tensor], spec, x: torch.Tensor,
             y: torch.Tensor, normalizer=None, sigmas: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
             soup_sizes: Sequence[int] = (2, 4, 8, 16), n: int = 20, seed: int = 0,
             latent=None, latent_scales: Sequence[float] = ()) -> dict:
    """Everything the frontier plot of one zoo needs, on images ``(x, y)``.

    - ``curves``: ``{"noise": [...], "soup": [...]}``, :func:`baseline_curve` rows, and
      ``"latent noise"`` over ``latent_scales`` when ``latent = (latents, decode)`` is given;
    - ``points``: ``{"checkpoints": ..., name: ...}``: :func:`point` of the training
      checkpoints (each against the *other* checkpoints) and of every method;
    - ``margins``: per method, :func:`frontier_margin` above the noise curve, in points;
      ``latent_margins`` the same above the latent-noise curve (empty without it).
    """
    train_vectors = _check_vectors(train_vectors, "train_vectors")
    train_preds = predict_labels(train_vectors, spec, x)
    train_err = error_sets(train_preds, y)
    accs = accuracies(train_preds, y)
    self_iou = max_similarity(train_err, train_err, exclude=torch.eye(len(train_err), dtype=torch.bool))
    points = {"checkpoints": {"mean_acc": accs.mean().item(), "max_iou": self_iou.mean().item(),
                              "accs": accs, "max_ious": self_iou}}
    for name, vectors in methods.items():
        points[name] = point(vectors, spec, x, y, train_err)
    curves = {"noise": baseline_curve("noise", sigmas, train_vectors, n, spec, x, y, train_err, normalizer, seed),
              "soup": baseline_curve("soup", soup_sizes, train_vectors, n, spec, x, y, train_err, None, seed + 1)}
    latent_margins = {}
    if latent is not None and len(latent_scales):
        curves["latent noise"] = baseline_curve("latent noise", latent_scales, train_vectors, n, spec, x, y,
                                                train_err, seed=seed + 2, latent=latent)
        latent_margins = {name: frontier_margin(curves["latent noise"], pt["mean_acc"], pt["max_iou"])
                          for name, pt in points.items()}
    margins = {name: frontier_margin(curves["noise"], pt["mean_acc"], pt["max_iou"]) for name, pt in points.items()}
    return {"curves": curves, "points": points, "margins": margins, "latent_margins": latent_margins,
            "train_err": train_err}


def plot_frontier(curves: Mapping[str, Sequence[Mapping]], points: Mapping[str, Mapping],
                  ax=None, title: str | None = None, label_fmt: Mapping[str, str] | None = None):
    """Mean accuracy against mean max IoU: each baseline curve as a line (its knob values
    written beside the points) and each method as a marker. Up and left is better."""
    fig, ax = new_axes(ax, figsize=(8, 5.5))
    label_fmt = label_fmt or {}
    for i, (name, curve) in enumerate(curves.items()):
        pts = sorted(curve, key=lambda r: r["max_iou"])
        xs, ys = [r["max_iou"] for r in pts], [r["mean_acc"] for r in pts]
        ax.plot(xs, ys, "-o", ms=4, lw=1.5, color=_color(name, i), label=f"{name} curve")
        fmt = label_fmt.get(name, "{}")
        for r in pts:
            ax.annotate(fmt.format(r["value"]), (r["max_iou"], r["mean_acc"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points", color=_color(name, i))
    markers = "s^vDP*Xo"
    for j, (name, pt) in enumerate(points.items()):
        ax.scatter([pt["max_iou"]], [pt["mean_acc"]], s=70, marker=markers[j % len(markers)],
                   color=f"C{(j + 3) % 10}", edgecolor="k", zorder=5, label=name)
    ax.set_xlabel("mean max IoU of error sets with any training checkpoint (left = newer)")
    ax.set_ylabel("mean accuracy (%)")
    ax.set_title(title or "Accuracy-novelty frontier")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def results_table(rows: Sequence[Mapping], columns: Sequence[str] = (
        "name", "n", "mean", "median", "best", "worst", "max_iou", "nearest_dist", "copies"),
        digits: int = 2) -> str:
    """A markdown table of the scalar columns of :func:`evaluate_methods` rows."""
    headers = {"name": "method", "n": "n", "mean": "mean acc %", "median": "median %",
               "best": "best %", "worst": "worst %", "max_iou": "mean max IoU",
               "nearest_dist": "nearest ckpt dist", "copies": "exact copies"}

    def fmt(v):
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else (f"{v:.3f}" if abs(v) < 1 else f"{v:.{digits}f}")
        return str(v)

    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" if c == "name" else "---:" for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def verdict(rows: Sequence[Mapping], method: str = "generated", reference: str = "checkpoints",
            acc_margin: float = 0.5, iou_margin: float = 0.02, useful_drop: float = 5.0) -> str:
    """Plain sentences comparing ``method`` with the reference and every baseline, from the table.

    A baseline *reaches the generator's region* if its mean accuracy is at most
    ``acc_margin`` points lower and its mean max IoU at most ``iou_margin``
    higher. IoU is only compared among *useful* methods (mean accuracy within
    ``useful_drop`` points of the reference): a network that is wrong on most
    images has a low IoU with every checkpoint without being "new" in any useful way.
    """
    by = {r["name"]: r for r in rows}
    if method not in by or reference not in by:
        raise KeyError(f"verdict needs rows named {method!r} and {reference!r}; got {list(by)}")
    g, ref = by[method], by[reference]
    lines = [
        f"{method}: mean accuracy {g['mean']:.2f}% (median {g['median']:.2f}%, worst {g['worst']:.2f}%) "
        f"vs {reference} {ref['mean']:.2f}% (median {ref['median']:.2f}%): "
        f"{g['mean'] - ref['mean']:+.2f} points.",
        f"novelty: mean max IoU with a training checkpoint {g['max_iou']:.3f} vs {ref['max_iou']:.3f} "
        f"between two checkpoints; nearest-checkpoint distance {g['nearest_dist']:.3f} vs "
        f"{ref['nearest_dist']:.3f} (normalised RMS units).",
    ]
    others = [r for r in rows if r["name"] not in (method, reference)]
    useless = [f"{r['name']} ({r['mean']:.1f}%)" for r in others if r["mean"] < ref["mean"] - useful_drop]
    if g["mean"] < ref["mean"] - useful_drop:
        # a network wrong on many images has a low IoU with everything: that is not novelty
        lines.append(f"-> the {method} networks are far less accurate than the checkpoints, so their low "
                     f"similarity mostly counts extra mistakes, not useful novelty.")
        better = [f"{r['name']} ({r['mean']:.2f}%)" for r in others if r["mean"] > g["mean"] + acc_margin]
        if better:
            lines.append("-> cheap baselines more accurate than the generator: " + ", ".join(better) + ".")
    else:
        if g["max_iou"] >= ref["max_iou"] - iou_margin:
            lines.append(f"-> the {method} networks make the same mistakes as the checkpoints at least as "
                         f"much as the checkpoints do among themselves: by this measure they are not new.")
        else:
            lines.append(f"-> the {method} networks share fewer mistakes with their closest checkpoint "
                         f"than checkpoints do with each other.")
        reach = [f"{r['name']} ({r['mean']:.2f}%, IoU {r['max_iou']:.3f})" for r in others
                 if r["mean"] >= ref["mean"] - useful_drop and r["mean"] >= g["mean"] - acc_margin
                 and r["max_iou"] <= g["max_iou"] + iou_margin]
        if reach:
            lines.append("-> cheap baselines that reach the same accuracy/novelty region: " + ", ".join(reach)
                         + ". On this zoo the generator does not beat them.")
        else:
            lines.append("-> no baseline reaches the generator's accuracy at equal or lower similarity "
                         "to the checkpoints.")
    if useless:
        lines.append("-> not useful networks (more than "
                     f"{useful_drop:g} points below the checkpoints): " + ", ".join(useless) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Ensembles
# ---------------------------------------------------------------------------


def ensemble_accuracy_from_probs(probs: torch.Tensor, y: torch.Tensor,
                                 sizes: Sequence[int]) -> list[float]:
    """Accuracy (%) of the ensemble of the first K members, for each K in ``sizes``.

    ``probs`` (K_max, N, C). ``\\bar p_K(y|x) = (1/K) Σ_{k<K} p_k(y|x)``,
    prediction ``argmax_y \\bar p_K``. A running sum makes it one pass.
    """
    if max(sizes) > len(probs):
        raise ValueError(f"ensemble sizes up to {max(sizes)} but only {len(probs)} members")
    # cumulative sums: S_K = Σ_{k<K} p_k (the 1/K does not change the argmax)
    cum = probs.cumsum(dim=0)
    return [((cum[k - 1].argmax(dim=-1) == y).float().mean() * 100).item() for k in sizes]


def ensemble_curve(vectors: torch.Tensor, spec, x: torch.Tensor, y: torch.Tensor,
                   sizes: Sequence[int]) -> list[float]:
    """Test accuracy (%) of an ensemble of the first K networks, for each K in ``sizes``.

    Members average their predicted probabilities (not their weights: that
    would be a soup).
    """
    vectors = _check_vectors(vectors)
    probs = predict_probs(vectors[:max(sizes)], spec, x)
    return ensemble_accuracy_from_probs(probs, y, sizes)


# ---------------------------------------------------------------------------
# Fine-tuning from generated weights
# ---------------------------------------------------------------------------


def random_init_vector(spec, seed: int = 0) -> torch.Tensor:
    """The raw weight vector (D,) of a freshly initialised network of ``spec`` (PyTorch default init)."""
    params = dict(classifiers.build_model(spec, seed=seed).named_parameters())
    # flattening order = classifiers.param_shapes order (as helpers.weights.flatten)
    return torch.cat([params[name].detach().flatten() for name, _ in classifiers.param_shapes(spec)])


def finetune_curves(start_vectors: Mapping[str, torch.Tensor], spec, data: Sequence[torch.Tensor],
                    steps: int = 300, lr: float = 1e-3, batch_size: int = 128,
                    eval_every: int = 25, seed: int = 0, progress: bool = True) -> dict:
    """Train from several starting points with the same batches; record loss and accuracy.

    ``start_vectors`` maps a name ("generated", "random init", "checkpoint")
    to a raw weight vector (D,). ``data = (x_train, y_train, x_test, y_test)``
    as in-memory tensors (inputs normalised). Each start sees the *same*
    sequence of mini-batches (seeded by ``seed``) and is trained with Adam at
    learning rate ``lr`` for ``steps`` steps. Returns, per name, a dict with
    ``loss`` (training loss at every step, before its update), ``eval_steps``
    and ``test_acc`` (% at step 0, every ``eval_every`` steps and at the end). The networks
    train on :func:`helpers.runtime.device`; the batches are drawn on the CPU and moved.
    """
    dev = runtime.device()
    x_train, y_train, x_test, y_test = data
    g = torch.Generator().manual_seed(seed)
    batches = torch.randint(len(x_train), (steps, batch_size), generator=g)
    eval_at = sorted(set(range(0, steps + 1, max(1, eval_every))) | {steps})
    histories = {}
    for name, vector in start_vectors.items():
        model = weights.load_into_model(torch.as_tensor(vector).float().flatten(), spec).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses, accs = [], []

        def test_acc():
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(x_test[i:i + 4096].to(dev)).argmax(-1).cpu()
                                  for i in range(0, len(x_test), 4096)])
            model.train()
            return ((pred == y_test).float().mean() * 100).item()

        bar = runtime.progress(range(steps + 1), desc=f"fine-tune from {name}") if progress else range(steps + 1)
        for step in bar:
            if step in eval_at:
                accs.append(test_acc())
            if step == steps:
                break
            model.train()
            idx = batches[step]
            loss = F.cross_entropy(model(x_train[idx].to(dev)), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        histories[name] = {"loss": losses, "eval_steps": eval_at, "test_acc": accs}
    return histories


# ---------------------------------------------------------------------------
# Weight statistics per layer
# ---------------------------------------------------------------------------


def layer_slices(spec) -> list[tuple[str, slice]]:
    """``(parameter name, slice into the flat vector)`` for each parameter tensor of ``spec``."""
    out, start = [], 0
    for name, shape in classifiers.param_shapes(spec):
        n = math.prod(shape)
        out.append((name, slice(start, start + n)))
        start += n
    return out


def layer_weight_stats(methods: Mapping[str, torch.Tensor], spec) -> dict:
    """Per parameter tensor, the values of every method: ``{layer: {method: 1-D array}}``.

    Also the mean and std per (layer, method) under ``"_summary"``.
    """
    stats, summary = {}, {}
    for layer, sl in layer_slices(spec):
        stats[layer] = {}
        for name, vectors in methods.items():
            v = _check_vectors(vectors, name)[:, sl].flatten()
            stats[layer][name] = v.numpy()
            summary[(layer, name)] = (v.mean().item(), v.std().item())
    stats["_summary"] = summary
    return stats


# ---------------------------------------------------------------------------
# Figures (ax=None, return the figure)
# ---------------------------------------------------------------------------

_COLORS = {"checkpoints": "0.35", "generated": "C3", "noise": "C0", "soup": "C2",
           "gaussian": "C4", "vae_prior": "C1", "direct": "C5", "latent noise": "C9"}


def _color(name: str, i: int) -> str:
    return _COLORS.get(name, f"C{(i + 6) % 10}")


def plot_accuracy_scatter(train_accs, gen_accs, ax=None, title: str | None = None,
                          gen_label: str = "generated"):
    """The "generated CNN accuracy scatter": each network's test accuracy, checkpoints beside generated.

    x is the network's index within its group; dashed lines mark the group means.
    """
    fig, ax = new_axes(ax, figsize=(7, 4))
    for i, (label, accs) in enumerate((("training checkpoints", train_accs), (gen_label, gen_accs))):
        a = torch.as_tensor(accs).float().numpy()
        color = _color("checkpoints" if i == 0 else "generated", i)
        ax.scatter(np.arange(len(a)), a, s=14, alpha=0.7, color=color,
                   label=f"{label} (n={len(a)}, mean {a.mean():.2f}%)")
        ax.axhline(a.mean(), color=color, ls="--", lw=1)
    ax.set_xlabel("network index")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy: training checkpoints vs generated networks")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_method_strip(rows: Sequence[Mapping], ax=None, title: str | None = None):
    """Each method's per-network accuracies as a jittered strip, with the median marked."""
    fig, ax = new_axes(ax, figsize=(8, 4))
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        a = torch.as_tensor(row["accs"]).float().numpy()
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(a)), a, s=10, alpha=0.6, color=_color(row["name"], i))
        ax.plot([i - 0.3, i + 0.3], [np.median(a)] * 2, color="k", lw=1.5)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Accuracy of every network, by method (black: median)")
    return fig


def plot_accuracy_vs_similarity(rows: Sequence[Mapping], ax=None, title: str | None = None,
                                zoom_min_acc: float | None = None):
    """Accuracy against maximum error-set IoU to the training checkpoints, one colour per method.

    Top right = accurate but a near copy; top left = accurate *and* new.
    With ``zoom_min_acc`` (and no ``ax``) a second panel zooms in on the
    networks at or above that accuracy, where the comparison matters (a network
    wrong on most images has a low IoU with everything).
    """
    import matplotlib.pyplot as plt

    if zoom_min_acc is not None and ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    else:
        fig, ax = new_axes(ax, figsize=(7, 5))
        axes = [ax]
    for k, a_x in enumerate(axes):
        for i, row in enumerate(rows):
            a = torch.as_tensor(row["accs"]).float().numpy()
            s = torch.as_tensor(row["max_ious"]).float().numpy()
            keep = a >= zoom_min_acc if k == 1 else np.ones_like(a, dtype=bool)
            a_x.scatter(s[keep], a[keep], s=16, alpha=0.7, color=_color(row["name"], i),
                        label=f"{row['name']} ({int(keep.sum())})" if k == 1 else row["name"])
        a_x.set_xlabel("max IoU of error sets with any training checkpoint")
        a_x.set_ylabel("test accuracy (%)")
    axes[0].set_xlim(-0.02, 1.02)
    axes[0].set_title(title or "Accuracy vs similarity to the training checkpoints")
    axes[0].legend(fontsize=8)
    if len(axes) > 1:
        axes[1].set_title(f"zoom: networks with accuracy >= {zoom_min_acc:.1f}%")
        axes[1].legend(fontsize=8, title="method (shown)", title_fontsize=8)
        fig.tight_layout()
    return fig


def plot_layer_histograms(stats: Mapping, methods: Sequence[str] | None = None,
                          bins: int = 60, axes=None, max_layers: int | None = None):
    """Histograms of weight values per parameter tensor, one panel per layer, methods overlaid."""
    import matplotlib.pyplot as plt

    layers = [k for k in stats if k != "_summary"][:max_layers]
    if axes is None:
        ncol = min(4, len(layers))
        nrow = math.ceil(len(layers) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
        axes = axes.flatten()
    else:
        axes = np.asarray(axes).flatten()
        fig = axes[0].figure
    for ax, layer in zip(axes, layers):
        names = methods or list(stats[layer])
        # the range is the first (reference) method's central 99.8 %, widened by half its width;
        # values outside are piled into the edge bins and counted in the legend
        lo, hi = np.percentile(stats[layer][names[0]], [0.1, 99.9])
        lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
        edges = np.linspace(lo, hi, bins + 1)
        for i, m in enumerate(names):
            v = stats[layer][m]
            out = float(np.mean((v < lo) | (v > hi)))
            label = f"{m} ({out:.0%} outside)" if out >= 0.005 else m
            ax.hist(np.clip(v, lo, hi), bins=edges, density=True, histtype="step", lw=1.2,
                    color=_color(m, i), label=label)
        ax.set_title(layer, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in axes[len(layers):]:
        ax.set_axis_off()
    fig.suptitle(f"Weight values per layer (range set by {names[0]}; outside values piled at the edges)")
    fig.tight_layout()
    return fig


def plot_ensemble_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], ax=None,
                         title: str | None = None):
    """Ensemble test accuracy against the number of members, one curve per method."""
    fig, ax = new_axes(ax)
    for i, (name, (sizes, accs)) in enumerate(curves.items()):
        ax.plot(sizes, accs, marker="o", ms=4, color=_color(name, i), label=f"ensemble of {name}")
    all_sizes = sorted({k for sizes, _ in curves.values() for k in sizes})
    ax.set_xscale("log")
    ax.set_xticks(all_sizes)
    ax.set_xticklabels([str(k) for k in all_sizes])
    ax.minorticks_off()
    ax.set_xlabel("ensemble size K (averaged probabilities)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Ensembles: accuracy as members are added")
    ax.legend(fontsize=8)
    return fig


def plot_finetune_curves(histories: Mapping[str, Mapping], axes=None, smooth: int = 10):
    """Two panels: training loss per step (moving average over ``smooth`` steps) and test accuracy."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    else:
        fig = axes[0].figure
    colors = {"generated": "C3", "random init": "0.5", "checkpoint": "C0"}
    for i, (name, h) in enumerate(histories.items()):
        loss = np.asarray(h["loss"], dtype=float)
        w = max(1, min(smooth, len(loss) // 5))
        ma = np.convolve(loss, np.ones(w) / w, mode="valid")
        c = colors.get(name, f"C{i + 4}")
        axes[0].plot(np.arange(w - 1, len(loss)), ma, color=c, label=name)
        axes[1].plot(h["eval_steps"], h["test_acc"], marker="o", ms=3, color=c, label=name)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(f"training loss (moving avg {smooth})")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Fine-tuning: loss")
    axes[1].set_title("Fine-tuning: test accuracy")
    fig.tight_layout()
    return fig
