"""Network weights as data: flat vectors, their normalisation, datasets of them, alignment.

A network of architecture ``spec`` (see :mod:`helpers.classifiers`) has
parameter tensors :math:`W_1, b_1, \\dots` with a fixed order
(:func:`param_shapes`). Concatenating them gives one vector
:math:`\\theta \\in \\mathbb{R}^D`, the unit a weight generator learns from:

- :func:`flatten` / :func:`unflatten`: state dict <-> vector, exact, with
  errors that say what was expected and what was found;
- :class:`Normalizer`: each parameter tensor standardised with one mean and
  std over all checkpoints (as p-diff does), stored with the model that uses it;
- :class:`WeightDataset`: N vectors, the spec, per-checkpoint metrics and the
  config that made them, saved as safetensors with JSON metadata;
- :func:`build_zoo` / :func:`build_or_load_zoo`: train the zoo (independent
  runs, then a trajectory of checkpoints per run) or load it from artifacts;
- :func:`align_to_reference`: *weight matching*. Hidden units of a layer can
  be permuted without changing the function: with a permutation matrix
  :math:`P_l` on layer l's outputs, :math:`W_l \\to P_l W_l P_{l-1}^\\top`,
  :math:`b_l \\to P_l b_l` gives the same network. Two independently trained
  networks are thus compared in arbitrary unit orders. Weight matching
  (Ainsworth et al., "Git Re-Basin", 2023) picks the :math:`P_l` that maximise
  :math:`\\sum_l \\langle W^A_l, P_l W^B_l P_{l-1}^\\top \\rangle`, one layer at a
  time, each step a linear assignment problem
  (``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from . import artifacts, classifiers, data, plots
from . import config as _config
from .classifiers import param_shapes, unflatten  # the architecture's layout of a flat vector; part of this API


FORMAT = "ldt-weight-dataset/1"
METRIC_KEYS = ("run_seed", "epoch", "step", "train_loss", "test_acc")


# ---------------------------------------------------------------------------
# Flat vectors
# ---------------------------------------------------------------------------

def _check_state_dict(state_dict: Mapping[str, torch.Tensor], spec: Mapping) -> None:
    """Raise ValueError naming the first parameter whose name or shape does not match ``spec``."""
    expected = param_shapes(spec)
    names = [n for n, _ in expected]
    for name, shape in expected:
        if name not in state_dict:
            raise ValueError(
                f"state dict has no parameter {name!r} (expected shape {tuple(shape)}) "
                f"for spec {classifiers.describe(spec)}; found parameters {sorted(state_dict)}")
        found = tuple(state_dict[name].shape)
        if found != tuple(shape):
            raise ValueError(
                f"parameter {name!r}: expected shape {tuple(shape)} for spec {classifiers.describe(spec)}, "
                f"found {found}")
    extra = sorted(set(state_dict) - set(names))
    if extra:
        raise ValueError(f"state dict has unexpected parameter(s) {extra} for spec "
                         f"{classifiers.describe(spec)}; expected exactly {names}")


def flatten(state_dict: Mapping[str, torch.Tensor], spec: Mapping | None = None) -> torch.Tensor:
    """:math:`\\theta = [\\mathrm{vec}(W_1), b_1, \\mathrm{vec}(W_2), \\dots]`: a float32 vector (D,).

    With ``spec`` the names and shapes are checked and the spec's order is
    used; without it, the state dict's own order.
    """
    if spec is not None:
        _check_state_dict(state_dict, spec)
        names = [n for n, _ in param_shapes(spec)]
    else:
        names = list(state_dict)
    return torch.cat([state_dict[n].detach().reshape(-1).to(torch.float32) for n in names])


def load_into_model(vector: torch.Tensor, spec: Mapping) -> torch.nn.Module:
    """A :class:`helpers.classifiers.Classifier` of ``spec`` with the weights ``vector`` (D,)."""
    model = classifiers.build_model(spec)
    model.load_state_dict({k: v.clone() for k, v in unflatten(vector, spec).items()})
    model.eval()
    return model


def state_dict_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters of a model as a detached state dict (no buffers)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------

class Normalizer:
    """Per-parameter-tensor standardisation: :math:`z = (\\theta - \\mu_t) / \\sigma_t`.

    For each parameter tensor t (e.g. ``conv0.weight``) one mean :math:`\\mu_t`
    and one std :math:`\\sigma_t` over all N checkpoints and all entries of that
    tensor. Layers of very different scale then contribute alike to a loss.
    :meth:`state` returns tensors to save beside the model that uses them.
    """

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 sizes: torch.Tensor | None = None):
        self.mean, self.std, self.sizes = mean, std, sizes

    def fit(self, vectors: torch.Tensor, spec: Mapping, eps: float = 1e-8) -> "Normalizer":
        """Fit :math:`\\mu_t, \\sigma_t` on ``vectors`` (N, D) of architecture ``spec``."""
        parts = unflatten(torch.as_tensor(vectors, dtype=torch.float32), spec)
        self.mean = torch.stack([p.mean() for p in parts.values()])
        self.std = torch.stack([p.std(unbiased=False).clamp_min(eps) for p in parts.values()])
        self.sizes = torch.tensor([math.prod(s) for _, s in param_shapes(spec)], dtype=torch.long)
        return self

    def _expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean is None:
            raise RuntimeError("Normalizer is not fitted: call fit(vectors, spec) or from_state(...)")
        return (torch.repeat_interleave(self.mean, self.sizes),
                torch.repeat_interleave(self.std, self.sizes))

    def _check(self, v: torch.Tensor) -> None:
        d = int(self.sizes.sum())
        if v.shape[-1] != d:
            raise ValueError(f"Normalizer was fitted on D={d} parameters, got vectors of length {v.shape[-1]}")

    def normalize(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`z = (\\theta - \\mu) / \\sigma`, for v of shape (..., D)."""
        mu, sd = self._expanded()
        self._check(v)
        return (v - mu) / sd

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\theta = z \\sigma + \\mu`, for z of shape (..., D)."""
        mu, sd = self._expanded()
        self._check(z)
        return z * sd + mu

    def state(self) -> dict[str, torch.Tensor]:
        """``{"mean", "std", "sizes"}`` tensors (per parameter tensor), to save with a model."""
        self._expanded()
        return {"mean": self.mean.clone(), "std": self.std.clone(), "sizes": self.sizes.clone()}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> "Normalizer":
        """Rebuild a fitted Normalizer from :meth:`state` (keys may carry a prefix stripped by the caller)."""
        missing = [k for k in ("mean", "std", "sizes") if k not in state]
        if missing:
            raise ValueError(f"Normalizer state needs 'mean', 'std', 'sizes'; missing {missing}")
        return cls(state["mean"].float(), state["std"].float(), state["sizes"].long())


# ---------------------------------------------------------------------------
# The weight dataset
# ---------------------------------------------------------------------------

@dataclass
class WeightDataset:
    """N flattened networks of one architecture, with what is known about each.

    - ``vectors``: float32 (N, D), aligned to run 0 when ``config["align"]``;
    - ``spec``: the architecture (see :mod:`helpers.classifiers`);
    - ``metrics``: one dict per checkpoint with run_seed, epoch, step,
      train_loss, test_acc (and run, phase);
    - ``config``: the zoo config that made it;
    - ``run_vectors``: (R, D) the unaligned end of each run's pre-training
      (the "independent networks" way of collecting), optional;
    - ``loss_curves``: (R, steps) per-step training loss of each run, optional.
    """

    vectors: torch.Tensor
    spec: dict
    metrics: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    run_vectors: torch.Tensor | None = None
    loss_curves: torch.Tensor | None = None

    def __post_init__(self):
        self.vectors = torch.as_tensor(self.vectors, dtype=torch.float32)
        d = classifiers.count_params(self.spec)
        if self.vectors.ndim != 2 or self.vectors.shape[1] != d:
            raise ValueError(f"expected vectors of shape (N, D={d}) for {classifiers.describe(self.spec)}, "
                             f"got {tuple(self.vectors.shape)}")
        if self.metrics and len(self.metrics) != self.vectors.shape[0]:
            raise ValueError(f"{len(self.metrics)} metric rows for {self.vectors.shape[0]} vectors")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        """D, the number of parameters per network."""
        return self.vectors.shape[1]

    def column(self, key: str) -> torch.Tensor:
        """One metric over all checkpoints as a float64 tensor (N,)."""
        return torch.tensor([float(m[key]) for m in self.metrics], dtype=torch.float64)

    @property
    def test_acc(self) -> torch.Tensor:
        """Test accuracy of every checkpoint, in % (N,)."""
        return self.column("test_acc")

    @property
    def run_seed(self) -> torch.Tensor:
        """Seed of the run each checkpoint comes from (N,)."""
        return self.column("run_seed").long()

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Checkpoint ``i`` as a state dict."""
        return {k: v.clone() for k, v in unflatten(self.vectors[i], self.spec).items()}

    def model(self, i: int) -> torch.nn.Module:
        """Checkpoint ``i`` as a ready-to-use model."""
        return load_into_model(self.vectors[i], self.spec)

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file: the tensors, and spec/shapes/metrics/config as JSON metadata."""
        tensors = {"vectors": self.vectors}
        if self.run_vectors is not None:
            tensors["run_vectors"] = self.run_vectors
        if self.loss_curves is not None:
            tensors["loss_curves"] = self.loss_curves
        meta = {"format": FORMAT, "spec": self.spec, "D": self.dim,
                "param_shapes": [[n, list(s)] for n, s in param_shapes(self.spec)],
                "metrics": self.metrics, "config": dict(self.config)}
        return artifacts.save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, spec: Mapping | None = None) -> "WeightDataset":
        """Read a file written by :meth:`save`, checking it is self-consistent.

        With ``spec`` the stored architecture must equal it. Every mismatch
        raises :class:`helpers.artifacts.ArtifactError` saying what was
        expected and what was found.
        """
        tensors, meta = artifacts.load_tensors(
            path, hint="Delete it and run notebooks/01_weight_dataset.ipynb to rebuild it.")
        if meta.get("format") != FORMAT or "vectors" not in tensors:
            raise artifacts.ArtifactError(
                f"{path} is not a weight dataset: expected format {FORMAT!r} with a 'vectors' "
                f"tensor, found format {meta.get('format')!r} and tensors {sorted(tensors)}")
        stored = meta["spec"]
        if spec is not None and dict(spec) != stored:
            raise artifacts.ArtifactError(
                f"{path} holds networks of architecture {classifiers.describe(stored)}, "
                f"expected {classifiers.describe(spec)}")
        d = classifiers.count_params(stored)
        shapes = [[n, list(s)] for n, s in param_shapes(stored)]
        v = tensors["vectors"]
        if meta.get("D") != d or meta.get("param_shapes") != shapes or v.ndim != 2 or v.shape[1] != d:
            raise artifacts.ArtifactError(
                f"{path}: expected D={d} parameters {shapes} for {classifiers.describe(stored)}, "
                f"found D={meta.get('D')}, vectors of shape {tuple(v.shape)}")
        if len(meta.get("metrics", [])) != v.shape[0]:
            raise artifacts.ArtifactError(
                f"{path}: expected one metrics row per vector ({v.shape[0]}), "
                f"found {len(meta.get('metrics', []))}")
        return cls(v, stored, meta["metrics"], meta.get("config", {}),
                   tensors.get("run_vectors"), tensors.get("loss_curves"))

    def table(self, max_rows: int = 12) -> str:
        """A markdown table of the metadata (first and last rows, with an ellipsis)."""
        cols = ["#"] + [k for k in ("run_seed", "phase", "epoch", "step", "train_loss", "test_acc")
                        if not self.metrics or k in self.metrics[0]]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        n = len(self.metrics)
        rows = list(range(n)) if n <= max_rows else list(range(max_rows // 2)) + [-1] + \
            list(range(n - max_rows // 2, n))
        for i in rows:
            if i < 0:
                lines.append("| " + " | ".join(["..."] * len(cols)) + " |")
                continue
            m = self.metrics[i]
            cells = [str(i)]
            for k in cols[1:]:
                v = m[k]
                cells.append(f"{v:.4f}" if k == "train_loss" else f"{v:.2f}" if k == "test_acc"
                             else f"{v:g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Alignment by weight matching
# ---------------------------------------------------------------------------

def _layers(spec: Mapping) -> list[tuple[str, str]]:
    """``(weight name, bias name)`` of every layer, in forward order."""
    names = [n for n, _ in param_shapes(spec)]
    return [(names[i], names[i + 1]) for i in range(0, len(names), 2)]


def _as_units(w: torch.Tensor, n_in: int) -> torch.Tensor:
    """View a weight as (out units, in units, rest): conv (o, i, k, k) or fc (o, i) or
    the first fc after the convs, (o, C*H*W) -> (o, C, H*W)."""
    return w.reshape(w.shape[0], n_in, -1)


def _in_units(spec: Mapping) -> list[int]:
    """Number of input *units* (channels or features) of each layer."""
    out, prev = [], None
    for (w_name, _), (_, shape) in zip(_layers(spec), param_shapes(spec)[::2]):
        out.append(shape[1] if prev is None or len(shape) == 4 else prev)
        prev = shape[0]
    return out


def permute(state_dict: Mapping[str, torch.Tensor], perms: list[torch.Tensor], spec: Mapping) -> dict:
    """Apply hidden-unit permutations: :math:`W_l \\to P_l W_l P_{l-1}^\\top,\\ b_l \\to P_l b_l`.

    ``perms[l]`` (a LongTensor) lists, for each new position, the old unit of
    layer l's output; there is one per hidden layer (not for the logits).
    The permuted network computes the same function.
    """
    layers, n_in = _layers(spec), _in_units(spec)
    out = {k: v.clone() for k, v in state_dict.items()}
    for l, (w_name, b_name) in enumerate(layers):
        w = _as_units(state_dict[w_name], n_in[l])
        if l < len(perms):
            w = w[perms[l]]
            out[b_name] = state_dict[b_name][perms[l]].clone()
        if l > 0:
            w = w[:, perms[l - 1]]
        out[w_name] = w.reshape(state_dict[w_name].shape).clone()
    return out


def permutation_index(spec: Mapping, perms: list[torch.Tensor]) -> torch.Tensor:
    """The flat form of :func:`permute`: a LongTensor ``idx`` (D,) with
    ``flatten(permute(unflatten(v, spec), perms, spec)) == v[idx]`` for every vector ``v`` (D,),
    found by permuting the positions ``0 .. D-1`` themselves."""
    positions = unflatten(torch.arange(classifiers.count_params(spec)), spec)
    moved = permute(positions, perms, spec)
    return torch.cat([moved[n].reshape(-1) for n, _ in param_shapes(spec)])


def weight_matching(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                    spec: Mapping, max_iter: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """Permutations that align ``other`` (B) to ``reference`` (A), by coordinate ascent.

    For hidden layer l, with the other permutations fixed, the terms of
    :math:`\\sum_l \\langle W^A_l, P_l W^B_l P_{l-1}^\\top \\rangle` that involve
    :math:`P_l` are :math:`\\langle P_l, S_l \\rangle` with the similarity
    :math:`S_l[i, j] = \\langle W^A_l[i], (W^B_l P_{l-1}^\\top)[j] \\rangle + b^A_l[i] b^B_l[j]
    + \\langle W^A_{l+1}[:, i], (P_{l+1} W^B_{l+1})[:, j] \\rangle`,
    maximised exactly by ``linear_sum_assignment``. Layers are visited in random
    order until no permutation changes.
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    layers, n_in = _layers(spec), _in_units(spec)
    n_hidden = len(layers) - 1
    A = [(_as_units(reference[w], n_in[l]).double(), reference[b].double()) for l, (w, b) in enumerate(layers)]
    B = [(_as_units(other[w], n_in[l]).double(), other[b].double()) for l, (w, b) in enumerate(layers)]
    perms = [torch.arange(A[l][0].shape[0]) for l in range(n_hidden)]
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for l in rng.permutation(n_hidden):
            wa, ba = A[l]
            wb, bb = B[l]
            if l > 0:
                wb = wb[:, perms[l - 1]]
            # S[i, j] = <W^A_l[i], W^B_l[j]> + b^A_l[i] b^B_l[j]   (inputs already permuted)
            s = wa.flatten(1) @ wb.flatten(1).T + ba[:, None] * bb[None, :]
            wa_next, _ = A[l + 1]
            wb_next, _ = B[l + 1]
            if l + 1 < n_hidden:
                wb_next = wb_next[perms[l + 1]]
            # + <W^A_{l+1}[:, i], W^B_{l+1}[:, j]> over outputs and the rest
            s = s + torch.einsum("oir,ojr->ij", wa_next, wb_next)
            _, cols = linear_sum_assignment(s.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            if not torch.equal(new, perms[l]):
                # accept only improvements (ties keep the old permutation)
                old_score = s[torch.arange(len(new)), perms[l]].sum()
                new_score = s[torch.arange(len(new)), new].sum()
                if new_score > old_score + 1e-12:
                    perms[l] = new
                    changed = True
        if not changed:
            break
    return perms


def align_to_reference(state_dict: Mapping[str, torch.Tensor],
                       reference_state_dict: Mapping[str, torch.Tensor], spec: Mapping,
                       return_perms: bool = False):
    """``state_dict`` with its hidden units permuted to best match ``reference_state_dict``.

    Same function, new coordinates (see :func:`weight_matching`). With
    ``return_perms`` also returns the permutations.
    """
    _check_state_dict(state_dict, spec)
    _check_state_dict(reference_state_dict, spec)
    perms = weight_matching(reference_state_dict, state_dict, spec)
    aligned = permute(state_dict, perms, spec)
    return (aligned, perms) if return_perms else aligned


def _identity_perms(spec: Mapping) -> list[torch.Tensor]:
    """One identity permutation per hidden layer."""
    return [torch.arange(shape[0]) for _, shape in param_shapes(spec)[::2][:-1]]


def align_to_common_reference(vectors: torch.Tensor, spec: Mapping, max_iter: int = 10,
                              verbose: bool = False) -> tuple[torch.Tensor, list[list[torch.Tensor]], list[int]]:
    r"""Align N networks to one *common* reference, the mean of the aligned networks.

    Aligning every network to network 0 makes network 0 special: its unit order,
    and its quirks, become everyone's. Instead (an iterated, Procrustes-like
    barycentre):

    1. :math:`P^{(0)}_k` = weight matching of network k to network 0;
    2. :math:`\bar\theta = \frac1N \sum_k \pi_{P_k}(\theta_k)`, the mean of the aligned networks;
    3. re-match every network (network 0 included) to :math:`\bar\theta`; repeat 2-3
       until no assignment changes, or ``max_iter`` rounds.

    Returns ``(aligned vectors (N, D), perms (one list of per-layer permutations per
    network), changed (number of networks whose permutation changed, per round))``.
    Each aligned network computes exactly the same function as the original.
    """
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    sds = [unflatten(v, spec) for v in vectors]

    def apply(perms):
        return torch.stack([flatten(permute(sd, p, spec), spec) for sd, p in zip(sds, perms)])

    perms = [_identity_perms(spec)] + [weight_matching(sds[0], sd, spec) for sd in sds[1:]]
    aligned = apply(perms)
    changed_history = []
    for it in range(max_iter):
        ref = unflatten(aligned.mean(0), spec)
        new = [weight_matching(ref, sd, spec) for sd in sds]
        changed = sum(any(not torch.equal(a, b) for a, b in zip(p_old, p_new))
                      for p_old, p_new in zip(perms, new))
        changed_history.append(int(changed))
        perms = new
        aligned = apply(perms)
        if verbose:
            print(f"  alignment round {it + 1}: {changed} of {len(sds)} networks changed their permutation")
        if changed == 0:
            break
    return aligned, perms, changed_history


def interpolation_barriers(vectors_a: torch.Tensor, vectors_b: torch.Tensor, spec: Mapping,
                           x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Midpoint loss barrier of many pairs: :math:`B = \tfrac12(\mathrm{acc}(\theta_A) + \mathrm{acc}(\theta_B))
    - \mathrm{acc}(\tfrac12(\theta_A + \theta_B))`, in accuracy points (0 = no barrier).

    ``vectors_a``, ``vectors_b``: (P, D), pair i is (a_i, b_i). Returns tensors (P,):
    ``barrier``, ``mid_acc``, ``end_acc`` (mean of the two ends).
    """
    a, b = torch.as_tensor(vectors_a, dtype=torch.float32), torch.as_tensor(vectors_b, dtype=torch.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (P, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    accs = classifiers.evaluate_vectors(torch.cat([a, b, 0.5 * (a + b)]), spec, x, y)
    acc_a, acc_b, mid = accs.split(len(a))
    end = 0.5 * (acc_a + acc_b)
    return {"barrier": end - mid, "mid_acc": mid, "end_acc": end}


def random_pairs(n: int, n_pairs: int, seed: int = 0) -> torch.Tensor:
    """``n_pairs`` distinct unordered pairs (i < j) of ``range(n)``: LongTensor (n_pairs, 2)."""
    g = torch.Generator().manual_seed(seed)
    all_pairs = torch.combinations(torch.arange(n), 2)
    if n_pairs > len(all_pairs):
        raise ValueError(f"asked for {n_pairs} pairs of {n} networks; there are only {len(all_pairs)}")
    return all_pairs[torch.randperm(len(all_pairs), generator=g)[:n_pairs]]


def aligned_run_vectors(dataset: "WeightDataset") -> torch.Tensor:
    """The run end points of a many-seed zoo in the aligned coordinates (the stored permutations applied)."""
    perms = dataset.config.get("perms")
    if dataset.run_vectors is None or perms is None:
        raise ValueError("this weight dataset stores no run end points with permutations "
                         "(expected a zoo built with kind='multiseed' and align=True)")
    return torch.stack([flatten(permute(unflatten(v, dataset.spec), [torch.tensor(q) for q in p],
                                        dataset.spec), dataset.spec)
                        for v, p in zip(dataset.run_vectors, perms)])


def interpolate_accuracy(vector_a: torch.Tensor, vector_b: torch.Tensor, spec: Mapping,
                         x: torch.Tensor, y: torch.Tensor, n_points: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Test accuracy along the straight line :math:`\\theta(\\alpha) = (1-\\alpha)\\theta_A + \\alpha\\theta_B`.

    Returns ``(alphas (n_points,), accuracies in % (n_points,))``.
    """
    alphas = torch.linspace(0, 1, n_points)
    line = (1 - alphas[:, None]) * vector_a[None] + alphas[:, None] * vector_b[None]
    return alphas, classifiers.evaluate_vectors(line, spec, x, y)


# ---------------------------------------------------------------------------
# Building the zoo
# ---------------------------------------------------------------------------

ZOO_KINDS = ("trajectory", "multiseed", "wide")


def zoo_config(preset: str | None = None, kind: str = "trajectory", dataset: str | None = None, **overrides):
    """The zoo settings of a preset, a kind of zoo and a dataset (notebooks 02, 03, 05: ``ZOO = ...``).

    ``"trajectory"``: ``config.ZOO[preset]`` (a few runs, many checkpoints each);
    ``"multiseed"``: the same with ``config.ZOO_MULTISEED[preset]`` laid over it (many
    independent networks, a few checkpoints each); ``"wide"``: ``config.ZOO_WIDE[preset]``
    laid over it (checkpoints from early training on, a wide range of accuracies, for
    accuracy conditioning). ``dataset`` (None: ``$LDT_DATASET``, else "mnist") lays that
    dataset's settings (``config.WEIGHT_DATASETS``, sections ``zoo`` and ``zoo_<kind>``) over
    them. Keyword overrides must name existing keys.
    """
    import copy

    if kind not in ZOO_KINDS:
        raise ValueError(f"unknown zoo kind {kind!r}; expected one of {', '.join(ZOO_KINDS)}")
    if kind == "trajectory":
        return _config.get_config("zoo", preset, dataset=dataset, **overrides)
    base = _config.get_config("zoo", preset, dataset=dataset)
    extra = _config.ZOO_WIDE if kind == "wide" else _config.ZOO_MULTISEED
    values = {**dict(base), **copy.deepcopy(extra[base.preset]),
              **_config.dataset_overrides(f"zoo_{kind}", base.preset, base.dataset)}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(f"unknown setting(s) {unknown} for the {kind} zoo; it has: {', '.join(sorted(values))}")
    values.update(overrides)
    return _config.Config(values, preset=base.preset, section=f"zoo ({kind})")


def zoo_spec(cfg: Mapping) -> dict:
    """The architecture a zoo config asks for: ``cfg["spec"]`` if given, else the default."""
    return dict(cfg.get("spec") or classifiers.default_spec(cfg.get("dataset", "mnist"), cfg.get("arch", "cnn")))


def zoo_augment(cfg: Mapping):
    """The batched augmentation a zoo config asks for (``cfg["augment"]``, keyword arguments of
    :func:`helpers.data.augment_images` on the dataset's normalised images), or None."""
    if not cfg.get("augment"):
        return None
    return functools.partial(data.augment_images, dataset=cfg.get("dataset", "mnist"), **dict(cfg["augment"]))


def _vectors(params: Mapping[str, torch.Tensor], spec: Mapping) -> torch.Tensor:
    """Stacked parameters name -> (K, ...) as flat vectors (K, D) on the CPU."""
    return torch.cat([params[n].detach().reshape(params[n].shape[0], -1) for n, _ in param_shapes(spec)], 1).cpu()


def _train_with_snapshots(params: dict[str, torch.Tensor], spec: Mapping, x: torch.Tensor, y: torch.Tensor,
                          cfg: Mapping, save_at, verbose: bool, **train_kwargs):
    """Train the stacked networks ``params`` (:func:`helpers.classifiers.train_stacked`, with the
    zoo's augmentation) and keep every network's weights after each step in ``save_at``.

    Returns ``(snapshots, steps, snapshot_losses, losses)``: one (K, D) CPU tensor per kept step,
    those steps, the mean training loss of each network since the previous kept step (K,), and
    the per-step losses of the whole run. The one checkpointing loop of every kind of zoo.
    """
    save_at = set(save_at)
    snaps, snap_steps, snap_losses, window = [], [], [], []

    def on_step(step: int, losses: torch.Tensor) -> None:
        window.append(losses)
        if step in save_at:
            snaps.append(_vectors(params, spec).clone())
            snap_steps.append(step)
            snap_losses.append(torch.stack(window).mean(0))
            window.clear()

    losses, _ = classifiers.train_stacked(params, spec, x, y, augment_shift=cfg.get("augment_shift", 0),
                                          augment=zoo_augment(cfg), on_step=on_step, progress=verbose,
                                          **train_kwargs)
    return snaps, snap_steps, snap_losses, losses


def build_zoo(cfg: Mapping, verbose: bool = True) -> WeightDataset:
    """Train the zoo that ``cfg`` describes (a ``zoo`` config section) and return it.

    1. **Independent runs.** ``n_runs`` networks, seeds ``seed, seed+1, ...``,
       each trained ``epochs`` epochs with Adam (learning rate ``lr``), all K at
       once with :func:`helpers.classifiers.train_stacked`. Their end points
       are ``run_vectors``: the "several independent networks" way.
    2. **Alignment.** If ``align``, every run's end point is aligned to run 0's
       by weight matching; the same permutation is applied to that run's
       whole trajectory, so the run keeps one coordinate system.
    3. **Trajectories.** Training continues for ``trajectory_epochs`` epochs at
       learning rate ``trajectory_lr``; every ``save_every`` steps a checkpoint
       of each run is kept, ``checkpoints_per_run`` in all (the "many
       checkpoints of one training run" way, as p-diff).
    4. **Selection.** Checkpoints below ``min_val_acc`` on a held-out
       validation split (the last ``val_size`` training images, never trained
       on) are dropped; test accuracy is measured for the rest.

    Runs with ``cfg["threads"]`` torch threads if set (restored afterwards),
    else with the current setting. On an idle 2-core machine two threads were
    measured faster than one; on a machine busy with other jobs, one thread is
    far faster (threads then wait on each other).
    """

    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    kind = cfg.get("kind", "trajectory")
    if kind not in ZOO_KINDS:
        raise ValueError(f"unknown zoo kind {kind!r}; expected one of {', '.join(ZOO_KINDS)}")
    try:
        if kind == "wide":
            return _build_wide_zoo(cfg, verbose)
        return _build_multiseed_zoo(cfg, verbose) if kind == "multiseed" else _build_zoo(cfg, verbose)
    finally:
        torch.set_num_threads(threads)


def _build_zoo(cfg: Mapping, verbose: bool) -> WeightDataset:
    spec = zoo_spec(cfg)
    dataset = cfg.get("dataset", "mnist")
    x_all, y_all = classifiers.load_split(dataset, "train")
    n_val = int(cfg["val_size"])
    x_val, y_val = x_all[-n_val:], y_all[-n_val:]
    x, y = x_all[:-n_val], y_all[:-n_val]
    if cfg.get("train_subset"):
        x, y = x[:cfg["train_subset"]], y[:cfg["train_subset"]]
    x_test, y_test = classifiers.load_split(dataset, "test", cfg.get("test_subset"))
    k = int(cfg["n_runs"])
    seeds = [int(cfg["seed"]) + r for r in range(k)]
    gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
    t0 = time.perf_counter()

    # 1. independent runs, trained together
    params = classifiers.init_stacked(spec, seeds)
    pre_losses, _ = classifiers.train_stacked(params, spec, x, y, epochs=cfg["epochs"],
                                       batch_size=cfg["batch_size"], lr=cfg["lr"], generators=gens,
                                       augment_shift=cfg.get("augment_shift", 0), augment=zoo_augment(cfg),
                                       progress=verbose)
    run_vectors = _vectors(params, spec).clone()
    if verbose:
        acc = classifiers.evaluate_vectors(run_vectors, spec, x_test, y_test)
        print(f"{k} runs x {cfg['epochs']} epochs: test acc {', '.join(f'{a:.2f}' for a in acc)} "
              f"({time.perf_counter() - t0:.0f} s)")

    # 2. permutations that align every run to run 0 (applied to the trajectory below)
    perms = [None] * k
    if cfg.get("align", True):
        ref = unflatten(run_vectors[0], spec)
        for r in range(1, k):
            perms[r] = weight_matching(ref, unflatten(run_vectors[r], spec), spec)

    # 3. trajectories: keep a checkpoint every `save_every` steps
    per_epoch = x.shape[0] // cfg["batch_size"]
    total = int(round(cfg["trajectory_epochs"] * per_epoch))
    n_keep = int(cfg["checkpoints_per_run"])
    save_every = max(1, total // n_keep)
    first_saved = total - save_every * (min(n_keep, total) - 1)
    opt = classifiers.adam(params.values(), cfg["trajectory_lr"])
    snaps, snap_steps, snap_losses, traj_losses = _train_with_snapshots(
        params, spec, x, y, cfg, range(first_saved, total + 1, save_every), verbose,
        epochs=cfg["trajectory_epochs"], batch_size=cfg["batch_size"], optimizer=opt, generators=gens)
    # (checkpoints, runs, D) -> run-major (runs * checkpoints, D)
    traj = torch.stack(snaps).transpose(0, 1)
    if cfg.get("align", True):
        for r in range(1, k):
            traj[r] = torch.stack([flatten(permute(unflatten(v, spec), perms[r], spec), spec)
                                   for v in traj[r]])
    flat = traj.reshape(-1, traj.shape[-1]).contiguous()

    # 4. selection on validation accuracy, then test accuracy
    val_acc = classifiers.evaluate_vectors(flat, spec, x_val, y_val)
    keep = val_acc >= cfg["min_val_acc"]
    test_acc = classifiers.evaluate_vectors(flat[keep], spec, x_test, y_test)
    pre_steps = pre_losses.shape[0]
    metrics, j = [], 0
    for i in range(flat.shape[0]):
        r, c = divmod(i, len(snaps))
        if not keep[i]:
            continue
        step = pre_steps + snap_steps[c]
        metrics.append({"run": r, "run_seed": seeds[r], "phase": "trajectory",
                        "epoch": round(step / per_epoch, 2), "step": step,
                        "train_loss": float(snap_losses[c][r]), "val_acc": float(val_acc[i]),
                        "test_acc": float(test_acc[j])})
        j += 1
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"kept {int(keep.sum())} of {flat.shape[0]} checkpoints (val acc >= {cfg['min_val_acc']}); "
              f"mean test acc {float(test_acc.mean()) if len(test_acc) else float('nan'):.2f} %; "
              f"{seconds:.0f} s")
    if not metrics:
        raise RuntimeError(f"no checkpoint reached min_val_acc={cfg['min_val_acc']}; lower it or train longer")
    config = {**dict(cfg), "spec": spec, "build_seconds": round(seconds, 1),
              "threads": torch.get_num_threads(), "pretrain_steps": pre_steps,
              "steps_per_epoch": per_epoch}
    return WeightDataset(flat[keep].clone(), spec, metrics, config,
                         run_vectors=run_vectors,
                         loss_curves=torch.cat([pre_losses, traj_losses]).T.contiguous())


def _zoo_data(cfg: Mapping):
    """(x, y) training images minus the validation split, (x_val, y_val), (x_test, y_test)."""
    dataset = cfg.get("dataset", "mnist")
    x_all, y_all = classifiers.load_split(dataset, "train")
    n_val = int(cfg["val_size"])
    x, y = x_all[:-n_val], y_all[:-n_val]
    if cfg.get("train_subset"):
        x, y = x[:cfg["train_subset"]], y[:cfg["train_subset"]]
    return (x, y), (x_all[-n_val:], y_all[-n_val:]), classifiers.load_split(dataset, "test", cfg.get("test_subset"))


def _build_multiseed_zoo(cfg: Mapping, verbose: bool) -> WeightDataset:
    """Many independent networks, a few checkpoints each, aligned to a common reference.

    ``n_runs`` networks (seeds ``seed, seed+1, ...``, each its own data order) are
    stepped together by :func:`helpers.classifiers.train_stacked` with a one-cycle
    rate; the last ``checkpoints_per_run`` checkpoints, ``checkpoint_every`` steps
    apart, are kept. The end points are aligned by
    :func:`align_to_common_reference` and each network's permutation is applied
    to all its checkpoints. Selection on validation accuracy as for the trajectory zoo.
    """
    spec = zoo_spec(cfg)
    (x, y), (x_val, y_val), (x_test, y_test) = _zoo_data(cfg)
    k = int(cfg["n_runs"])
    seeds = [int(cfg["seed"]) + r for r in range(k)]
    gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
    bs = int(cfg["batch_size"])
    per_epoch = x.shape[0] // bs
    total = int(round(cfg["epochs"] * per_epoch))
    n_keep, every = int(cfg["checkpoints_per_run"]), int(cfg["checkpoint_every"])
    save_at = sorted({total - every * c for c in range(n_keep) if total - every * c > 0})
    t0 = time.perf_counter()
    params = classifiers.init_stacked(spec, seeds)
    snaps, snap_steps, snap_losses, losses = _train_with_snapshots(
        params, spec, x, y, cfg, save_at, verbose, epochs=cfg["epochs"], batch_size=bs, lr=cfg["lr"],
        generators=gens, lr_schedule=cfg["lr_schedule"], warmup=cfg["warmup"])
    run_vectors = _vectors(params, spec).clone()
    train_seconds = time.perf_counter() - t0
    if verbose:
        print(f"{k} networks x {cfg['epochs']} epoch(s), trained together: {train_seconds:.0f} s")
    t1 = time.perf_counter()
    traj = torch.stack(snaps).transpose(0, 1).contiguous()          # (runs, checkpoints, D)
    perms, history = None, []
    if cfg.get("align", True):
        _, perms, history = align_to_common_reference(run_vectors, spec, int(cfg["align_iters"]), verbose)
        for r in range(k):
            traj[r] = torch.stack([flatten(permute(unflatten(v, spec), perms[r], spec), spec) for v in traj[r]])
    align_seconds = time.perf_counter() - t1
    flat = traj.reshape(-1, traj.shape[-1]).contiguous()
    val_acc = classifiers.evaluate_vectors(flat, spec, x_val, y_val)
    keep = val_acc >= cfg["min_val_acc"]
    if not bool(keep.any()):
        raise RuntimeError(f"no checkpoint reached min_val_acc={cfg['min_val_acc']}; lower it or train longer")
    test_acc = classifiers.evaluate_vectors(flat[keep], spec, x_test, y_test)
    metrics, j = [], 0
    for i in range(flat.shape[0]):
        r, c = divmod(i, len(snaps))
        if not keep[i]:
            continue
        metrics.append({"run": r, "run_seed": seeds[r], "phase": "multiseed",
                        "epoch": round(snap_steps[c] / per_epoch, 3), "step": snap_steps[c],
                        "train_loss": float(snap_losses[c][r]), "val_acc": float(val_acc[i]),
                        "test_acc": float(test_acc[j])})
        j += 1
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"aligned to a common reference in {align_seconds:.0f} s (networks changed per round: {history}); "
              f"kept {int(keep.sum())} of {flat.shape[0]} checkpoints (val acc >= {cfg['min_val_acc']}); "
              f"mean test acc {float(test_acc.mean()):.2f} %; {seconds:.0f} s")
    config = {**dict(cfg), "spec": spec, "build_seconds": round(seconds, 1),
              "train_seconds": round(train_seconds, 1), "align_seconds": round(align_seconds, 1),
              "threads": torch.get_num_threads(), "pretrain_steps": 0, "steps_per_epoch": per_epoch,
              "align_history": history,
              "perms": [[q.tolist() for q in p] for p in perms] if perms is not None else None}
    return WeightDataset(flat[keep].clone(), spec, metrics, config, run_vectors=run_vectors,
                         loss_curves=losses.T.contiguous())


def train_fresh_networks(cfg: Mapping, n: int, seed_offset: int = 100_000) -> torch.Tensor:
    """``n`` new networks, trained from seeds no zoo uses, with a many-seed zoo's recipe: (n, D).

    The *independent-training reference point* of notebook 05: what a freshly
    trained network looks like next to the zoo (its accuracy, and how similar its
    mistakes are to the zoo's). ``cfg``: a ``zoo_config(..., "multiseed")``.
    """
    spec = zoo_spec(cfg)
    (x, y), _, _ = _zoo_data(cfg)
    seeds = [int(cfg["seed"]) + seed_offset + i for i in range(n)]
    params = classifiers.init_stacked(spec, seeds)
    classifiers.train_stacked(params, spec, x, y, epochs=cfg["epochs"], batch_size=int(cfg["batch_size"]),
                       lr=cfg["lr"], generators=[torch.Generator().manual_seed(1000 + s) for s in seeds],
                       augment_shift=cfg.get("augment_shift", 0), augment=zoo_augment(cfg), lr_schedule=cfg["lr_schedule"],
                       warmup=cfg["warmup"])
    return _vectors(params, spec).clone()


# Zoo settings that change nothing that is stored: interp_points (points of notebook 01's
# interpolation curves) and threads (how many cores train it).
_NOT_TRAINING = ("interp_points", "threads")


def zoo_key(cfg: Mapping) -> dict:
    """The cache key of the zoo of ``cfg``: every setting that changes what is trained (all but
    the display and thread knobs), and the resolved architecture."""
    return {**{k: v for k, v in dict(cfg).items() if k not in _NOT_TRAINING}, "spec": zoo_spec(cfg)}


def zoo_path(cfg: Mapping) -> Path:
    """Where the weight dataset of ``cfg`` is stored: ``<artifacts>/zoo-<config hash>.safetensors``."""
    return artifacts.artifact_path("zoo", zoo_key(cfg))


def build_or_load_zoo(cfg: Mapping, rebuild: bool = False, verbose: bool = True) -> WeightDataset:
    """The weight dataset of ``cfg``: loaded from ``artifacts/zoo-<hash>.safetensors``, or built.

    Later notebooks call ``weights.build_or_load_zoo(config.get_config("zoo", PRESET))``.
    The hash covers the config and the resolved architecture.
    """
    key = zoo_key(cfg)
    return artifacts.cached("zoo", key, build=lambda: build_zoo(cfg, verbose=verbose),
                            save=lambda ds, path: ds.save(path),
                            load=lambda path: WeightDataset.load(path, spec=key["spec"]),
                            rebuild=rebuild, verbose=verbose)


# ---------------------------------------------------------------------------
# Figures (return the figure; the notebook shows and exports it)
# ---------------------------------------------------------------------------

def plot_interpolation(alphas: torch.Tensor, curves: Mapping[str, torch.Tensor], ax=None):
    """Test accuracy along :math:`(1-\\alpha)\\theta_A + \\alpha\\theta_B` for each named curve."""
    fig, ax = plots.new_axes(ax)
    for label, acc in curves.items():
        ax.plot(alphas.numpy(), torch.as_tensor(acc).numpy(), marker="o", ms=3, label=label)
    ax.set_xlabel(r"$\alpha$  (0 = network A, 1 = network B)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    return fig


def plot_barriers(barriers: Mapping[str, torch.Tensor], ax=None, bins: int = 20):
    """Histograms of midpoint barriers (accuracy points) over many pairs, one per label."""
    fig, ax = plots.new_axes(ax)
    values = {k: torch.as_tensor(v).float() for k, v in barriers.items()}
    lo = min(float(v.min()) for v in values.values())
    hi = max(float(v.max()) for v in values.values())
    edges = torch.linspace(min(lo, 0.0), max(hi, 1.0), bins + 1).numpy()
    for label, v in values.items():
        ax.hist(v.numpy(), bins=edges, alpha=0.6, label=f"{label} (mean {float(v.mean()):.1f})")
    ax.set_xlabel("midpoint barrier: mean end-point accuracy - midpoint accuracy (points)")
    ax.set_ylabel("pairs of networks")
    ax.legend(fontsize=8)
    return fig


def plot_loss_curves(loss_curves: torch.Tensor, pretrain_steps: int | None = None,
                     smooth: int = 25, ax=None):
    """Per-step training loss of each run (moving average over ``smooth`` steps), log scale."""
    fig, ax = plots.new_axes(ax)
    kernel = torch.ones(1, 1, smooth) / smooth
    for r, curve in enumerate(loss_curves):
        ys = torch.nn.functional.conv1d(curve.view(1, 1, -1), kernel).flatten() \
            if curve.numel() > smooth else curve
        ax.plot(torch.arange(len(ys)).numpy() + (len(curve) - len(ys)), ys.numpy(),
                lw=1, label=f"run {r}")
    if pretrain_steps:
        ax.axvline(pretrain_steps, color="k", ls="--", lw=1)
        ax.text(pretrain_steps, ax.get_ylim()[1], " checkpoints saved from here", va="top", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (cross-entropy)")
    if len(loss_curves) <= 10:
        ax.legend(fontsize=8, ncol=2)
    return fig


def plot_accuracy_histogram(dataset: WeightDataset, bins: int = 30, ax=None):
    """Histogram of the checkpoints' test accuracies, stacked by run."""
    fig, ax = plots.new_axes(ax)
    acc, run = dataset.test_acc, dataset.run_seed
    groups = [acc[run == s].numpy() for s in run.unique()]
    ax.hist(groups, bins=bins, stacked=True, label=[f"seed {int(s)}" for s in run.unique()])
    ax.axvline(float(acc.mean()), color="k", ls="--", lw=1)
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("checkpoints")
    ax.set_title(f"{len(dataset)} checkpoints, mean {float(acc.mean()):.2f} %")
    if len(groups) <= 10:
        ax.legend(fontsize=8)
    return fig


def distance_summary(dataset: WeightDataset) -> dict[str, float]:
    """Mean L2 distance between checkpoints of the same run, and between runs
    (aligned), and between the unaligned run end points; shows how tightly a
    trajectory clusters compared with independent networks."""
    v, run = dataset.vectors, dataset.run_seed
    d = torch.cdist(v, v)
    same = run[:, None] == run[None, :]
    off = ~torch.eye(len(v), dtype=torch.bool)
    out = {"within a run": float(d[same & off].mean()) if (same & off).any() else float("nan"),
           "between runs (aligned)": float(d[~same].mean()) if (~same).any() else float("nan")}
    if dataset.run_vectors is not None and len(dataset.run_vectors) > 1:
        r = torch.cdist(dataset.run_vectors, dataset.run_vectors)
        out["between runs (unaligned end points)"] = float(r[~torch.eye(len(r), dtype=torch.bool)].mean())
    return out


# ---------------------------------------------------------------------------
# The wide-accuracy zoo (accuracy conditioning over a wide range)
# ---------------------------------------------------------------------------

def checkpoint_steps(total: int, n: int, first: int = 1) -> list[int]:
    r"""About ``n`` distinct training steps from ``first`` to ``total``, spaced geometrically.

    :math:`s_i = \mathrm{round}(s_0 (T/s_0)^{i/(n-1)})`, duplicates dropped: dense early,
    where accuracy rises fast, sparse late, where it creeps.
    """
    total, n, first = int(total), int(n), int(first)
    if total < 1 or n < 1 or not 1 <= first <= total:
        raise ValueError(f"expected total >= 1, n >= 1 and 1 <= first <= total, "
                         f"found total={total}, n={n}, first={first}")
    if n == 1:
        return [total]
    ratio = (total / first) ** (1.0 / (n - 1))
    return sorted({min(total, int(round(first * ratio ** i))) for i in range(n)})


def even_selection(values, lo: float, hi: float, n_bins: int, per_bin: int) -> torch.Tensor:
    """Indices of a subset of ``values`` whose histogram over [lo, hi] is as flat as possible.

    [lo, hi] is cut into ``n_bins`` equal bins; from each bin at most ``per_bin``
    values are kept, evenly spaced in rank within the bin (so a crowded bin keeps
    a spread of its values, a sparse one keeps all). Values outside [lo, hi] are
    dropped. Returns the sorted indices (LongTensor). Deterministic.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not hi > lo or int(n_bins) < 1 or int(per_bin) < 1:
        raise ValueError(f"expected lo < hi, n_bins >= 1 and per_bin >= 1, "
                         f"found lo={lo}, hi={hi}, n_bins={n_bins}, per_bin={per_bin}")
    edges = torch.linspace(float(lo), float(hi), int(n_bins) + 1, dtype=torch.float64)
    inside = (v >= lo) & (v <= hi)
    bins = torch.bucketize(v, edges[1:-1], right=True)
    keep = []
    for b in range(int(n_bins)):
        idx = torch.nonzero(inside & (bins == b)).flatten()
        if len(idx) == 0:
            continue
        idx = idx[torch.argsort(v[idx], stable=True)]
        if len(idx) > per_bin:
            idx = idx[torch.linspace(0, len(idx) - 1, int(per_bin)).round().long()]
        keep.append(idx)
    return torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.long)


def _build_wide_zoo(cfg: Mapping, verbose: bool) -> WeightDataset:
    """Checkpoints from early training on, selected for an even spread of validation accuracy.

    1. ``n_runs`` networks (seeds ``seed, seed+1, ...``; with ``shared_init`` all start from
       the initialisation of seed ``seed`` and differ only in their data order, so the early
       checkpoints differ by what training changed, not by their random starts) trained together by
       :func:`helpers.classifiers.train_stacked` for ``epochs`` epochs (rate ``lr``,
       ``lr_schedule``, ``warmup``); a checkpoint of every run at each of the
       :func:`checkpoint_steps` (``checkpoints_per_run`` steps, geometric from
       ``first_checkpoint``), so the early, fast-rising part is well covered.
    2. If ``align``, every run's end point is aligned to run 0's by weight matching and
       the permutation is applied to the run's whole trajectory (as the trajectory zoo).
    3. Every checkpoint's accuracy on the first ``select_val_size`` images of the
       validation split (the last ``val_size`` training images, never trained on; None:
       all of them); :func:`even_selection` keeps at most ``per_bin`` checkpoints in each
       of ``n_bins`` bins over [``acc_lo``, ``acc_hi``] %. The kept ones are then measured
       on the whole validation split (``val_acc``, the condition of notebook 03's study)
       and on the test set (``test_acc``), which is never used to choose.
    """
    spec = zoo_spec(cfg)
    (x, y), (x_val, y_val), (x_test, y_test) = _zoo_data(cfg)
    k = int(cfg["n_runs"])
    seeds = [int(cfg["seed"]) + r for r in range(k)]
    gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
    bs = int(cfg["batch_size"])
    per_epoch = x.shape[0] // bs
    total = int(round(cfg["epochs"] * per_epoch))
    save_at = set(checkpoint_steps(total, int(cfg["checkpoints_per_run"]), int(cfg["first_checkpoint"])))
    t0 = time.perf_counter()
    # shared_init: every run starts from run 0's initialisation (and differs only in its data order)
    params = classifiers.init_stacked(spec, [seeds[0]] * k if cfg["shared_init"] else seeds)
    snaps, snap_steps, snap_losses, losses = _train_with_snapshots(
        params, spec, x, y, cfg, save_at, verbose, epochs=cfg["epochs"], batch_size=bs, lr=cfg["lr"],
        generators=gens, lr_schedule=cfg["lr_schedule"], warmup=cfg["warmup"])
    run_vectors = _vectors(params, spec).clone()
    train_seconds = time.perf_counter() - t0
    traj = torch.stack(snaps).transpose(0, 1).contiguous()          # (runs, checkpoints, D)
    if cfg.get("align", True):
        ref = unflatten(run_vectors[0], spec)
        for r in range(1, k):
            perm = weight_matching(ref, unflatten(run_vectors[r], spec), spec)
            traj[r] = torch.stack([flatten(permute(unflatten(v, spec), perm, spec), spec) for v in traj[r]])
    flat = traj.reshape(-1, traj.shape[-1]).contiguous()
    n_sel = int(cfg["select_val_size"] or x_val.shape[0])
    sel_acc = classifiers.evaluate_vectors(flat, spec, x_val[:n_sel], y_val[:n_sel])
    keep = even_selection(sel_acc, cfg["acc_lo"], cfg["acc_hi"], cfg["n_bins"], cfg["per_bin"])
    if len(keep) == 0:
        raise RuntimeError(f"no checkpoint has a validation accuracy in [{cfg['acc_lo']}, {cfg['acc_hi']}] %; "
                           f"found {float(sel_acc.min()):.1f}-{float(sel_acc.max()):.1f} %")
    val_acc = classifiers.evaluate_vectors(flat[keep], spec, x_val, y_val)
    test_acc = classifiers.evaluate_vectors(flat[keep], spec, x_test, y_test)
    metrics = []
    for j, i in enumerate(keep.tolist()):
        r, c = divmod(i, len(snaps))
        metrics.append({"run": r, "run_seed": seeds[r], "phase": "wide",
                        "epoch": round(snap_steps[c] / per_epoch, 3), "step": snap_steps[c],
                        "train_loss": float(snap_losses[c][r]), "val_acc": float(val_acc[j]),
                        "test_acc": float(test_acc[j])})
    seconds = time.perf_counter() - t0
    if verbose:
        kept = val_acc
        print(f"{k} runs x {total} steps, {len(snaps)} checkpoints each ({train_seconds:.0f} s); kept {len(keep)} "
              f"of {flat.shape[0]} for an even spread of val acc over [{cfg['acc_lo']}, {cfg['acc_hi']}] %: "
              f"{float(kept.min()):.1f}-{float(kept.max()):.1f} %; {seconds:.0f} s")
    config = {**dict(cfg), "spec": spec, "build_seconds": round(seconds, 1),
              "train_seconds": round(train_seconds, 1), "threads": torch.get_num_threads(),
              "pretrain_steps": 0, "steps_per_epoch": per_epoch}
    return WeightDataset(flat[keep].clone(), spec, metrics, config, run_vectors=run_vectors,
                         loss_curves=losses.T.contiguous())
