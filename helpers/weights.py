r"""Network weights as data (notebook 01): flat vectors, their normalisation, zoos of them saved with
their metrics, and weight matching (Git Re-Basin, https://arxiv.org/abs/2209.04836), which undoes the
permutations :math:`W_l \to P_l W_l P_{l-1}^\top` that leave a network's function unchanged.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from . import artifacts, classifiers, data
from . import config as _config
from .classifiers import param_shapes, unflatten  # the layout of a flat vector; part of this API

FORMAT = "ldt-weight-dataset/1"


def flatten(state_dict: Mapping[str, torch.Tensor], spec: Mapping | None = None) -> torch.Tensor:
    r""":math:`\theta = [\mathrm{vec}(W_1), b_1, \mathrm{vec}(W_2), \dots]` (D,); with ``spec``, checked and in its order."""
    names = list(state_dict)
    if spec is not None:
        expected = [(n, tuple(s)) for n, s in param_shapes(spec)]
        found = [(n, tuple(t.shape)) for n, t in state_dict.items()]
        if sorted(expected) != sorted(found):
            raise ValueError(f"state dict does not fit spec {classifiers.describe(spec)}: expected parameters "
                             f"{expected}, found {found}")
        names = [n for n, _ in expected]
    return torch.cat([state_dict[n].detach().reshape(-1).to(torch.float32) for n in names])


def load_into_model(vector: torch.Tensor, spec: Mapping) -> torch.nn.Module:
    """A :class:`helpers.classifiers.Classifier` holding the weights ``vector`` (D,), in eval mode."""
    model = classifiers.build_model(spec)
    model.load_state_dict({k: v.clone() for k, v in unflatten(vector, spec).items()})
    return model.eval()


class Normalizer:
    r"""Per-parameter-tensor standardisation :math:`z = (\theta - \mu_t) / \sigma_t`: one mean and
    std per tensor t over all checkpoints, so layers of different scale count alike (as p-diff)."""

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None, sizes=None):
        self.mean, self.std, self.sizes = mean, std, sizes

    def fit(self, vectors: torch.Tensor, spec: Mapping, eps: float = 1e-8) -> "Normalizer":
        parts = unflatten(torch.as_tensor(vectors, dtype=torch.float32), spec)
        self.mean = torch.stack([p.mean() for p in parts.values()])
        self.std = torch.stack([p.std(unbiased=False).clamp_min(eps) for p in parts.values()])
        self.sizes = torch.tensor([math.prod(s) for _, s in param_shapes(spec)], dtype=torch.long)
        return self

    def _expanded(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if v.shape[-1] != int(self.state()["sizes"].sum()):
            raise ValueError(f"Normalizer was fitted on D={int(self.sizes.sum())} parameters, "
                             f"got vectors of length {v.shape[-1]}")
        return torch.repeat_interleave(self.mean, self.sizes), torch.repeat_interleave(self.std, self.sizes)

    def normalize(self, v: torch.Tensor) -> torch.Tensor:
        mu, sd = self._expanded(v)
        return (v - mu) / sd

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mu, sd = self._expanded(z)
        return z * sd + mu

    def state(self) -> dict[str, torch.Tensor]:
        """``{"mean", "std", "sizes"}``, to save beside the model that uses it."""
        if self.mean is None:
            raise RuntimeError("Normalizer is not fitted: call fit(vectors, spec) or from_state(...)")
        return {"mean": self.mean.clone(), "std": self.std.clone(), "sizes": self.sizes.clone()}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> "Normalizer":
        return cls(state["mean"].float(), state["std"].float(), state["sizes"].long())


@dataclass
class WeightDataset:
    """N flattened networks of one architecture: ``vectors`` (N, D), ``spec``, one ``metrics`` dict
    per checkpoint (run_seed, step, train_loss, test_acc, ...), the ``config`` that made them, and
    optionally ``run_vectors`` (R, D), each run's unaligned end point, and ``loss_curves`` (R, steps)."""

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
        return self.vectors.shape[1]

    def column(self, key: str) -> torch.Tensor:
        """One metric of every checkpoint, float64 (N,)."""
        return torch.tensor([float(m[key]) for m in self.metrics], dtype=torch.float64)

    @property
    def test_acc(self) -> torch.Tensor:
        return self.column("test_acc")

    @property
    def run_seed(self) -> torch.Tensor:
        return self.column("run_seed").long()

    def save(self, path: str | Path) -> Path:
        tensors = {k: getattr(self, k) for k in ("vectors", "run_vectors", "loss_curves")}
        tensors = {k: v for k, v in tensors.items() if v is not None}
        meta = {"format": FORMAT, "spec": self.spec, "D": self.dim,
                "param_shapes": [[n, list(s)] for n, s in param_shapes(self.spec)],
                "metrics": self.metrics, "config": dict(self.config)}
        return artifacts.save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, spec: Mapping | None = None) -> "WeightDataset":
        """Read a file written by :meth:`save`; with ``spec`` the stored architecture must equal it.
        Every mismatch raises :class:`helpers.artifacts.ArtifactError` (expected, found)."""
        tensors, meta = artifacts.load_tensors(
            path, hint="Delete it and run notebooks/01_weight_dataset.ipynb to rebuild it.")
        if meta.get("format") != FORMAT or "vectors" not in tensors:
            raise artifacts.ArtifactError(
                f"{path} is not a weight dataset: expected format {FORMAT!r} with a 'vectors' tensor, "
                f"found format {meta.get('format')!r} and tensors {sorted(tensors)}")
        stored = meta["spec"]
        if spec is not None and dict(spec) != stored:
            raise artifacts.ArtifactError(f"{path} holds networks of architecture {classifiers.describe(stored)}, "
                                          f"expected {classifiers.describe(spec)}")
        if meta.get("param_shapes") != [[n, list(s)] for n, s in param_shapes(stored)] or not meta.get("metrics"):
            raise artifacts.ArtifactError(f"{path}: expected the parameters {param_shapes(stored)} of its spec and "
                                          f"metrics, found {meta.get('param_shapes')} and {len(meta.get('metrics', []))} rows")
        try:
            return cls(tensors["vectors"], stored, meta["metrics"], meta.get("config", {}),
                       tensors.get("run_vectors"), tensors.get("loss_curves"))
        except ValueError as err:
            raise artifacts.ArtifactError(f"{path}: {err}") from None


# --- Permutations and weight matching -----------------------------------------------------------

def _layers(spec: Mapping) -> list[tuple[str, str, int]]:
    """``(weight name, bias name, input units)`` per layer (after the convs: the last conv's channels)."""
    shapes = param_shapes(spec)
    out, prev = [], None
    for (w, shape), (b, _) in zip(shapes[::2], shapes[1::2]):
        out.append((w, b, shape[1] if prev is None or len(shape) == 4 else prev))
        prev = shape[0]
    return out


def permute(state_dict: Mapping[str, torch.Tensor], perms: list[torch.Tensor], spec: Mapping) -> dict:
    r""":math:`W_l \to P_l W_l P_{l-1}^\top,\ b_l \to P_l b_l`: the same function in another unit order.
    ``perms[l]`` lists, for each new position, the old unit of hidden layer l."""
    out = {k: v.clone() for k, v in state_dict.items()}
    for l, (w_name, b_name, n_in) in enumerate(_layers(spec)):
        w = state_dict[w_name].reshape(state_dict[w_name].shape[0], n_in, -1)   # (out, in units, rest)
        if l < len(perms):
            w = w[perms[l]]
            out[b_name] = state_dict[b_name][perms[l]].clone()
        if l > 0:
            w = w[:, perms[l - 1]]
        out[w_name] = w.reshape(state_dict[w_name].shape).clone()
    return out


def permutation_index(spec: Mapping, perms: list[torch.Tensor]) -> torch.Tensor:
    """``idx`` (D,) with ``flatten(permute(unflatten(v), perms)) == v[idx]``: the positions permuted."""
    moved = permute(unflatten(torch.arange(classifiers.count_params(spec)), spec), perms, spec)
    return torch.cat([moved[n].reshape(-1) for n, _ in param_shapes(spec)])


def weight_matching(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                    spec: Mapping, max_iter: int = 100, seed: int = 0) -> list[torch.Tensor]:
    r"""Permutations of ``other`` (B) maximising :math:`\sum_l \langle W^A_l, P_l W^B_l P_{l-1}^\top\rangle`:
    layer by layer in random order until none changes, each by ``linear_sum_assignment`` on :math:`S_l`."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    layers = _layers(spec)
    A = [(reference[w].reshape(reference[w].shape[0], n, -1).double(), reference[b].double()) for w, b, n in layers]
    B = [(other[w].reshape(other[w].shape[0], n, -1).double(), other[b].double()) for w, b, n in layers]
    n_hidden = len(layers) - 1
    perms = [torch.arange(A[l][0].shape[0]) for l in range(n_hidden)]
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for l in rng.permutation(n_hidden):
            (wa, ba), (wb, bb) = A[l], B[l]
            if l > 0:
                wb = wb[:, perms[l - 1]]
            # S[i, j] = <W^A_l[i], W^B_l[j]> + b^A_l[i] b^B_l[j]   (inputs already permuted)
            s = wa.flatten(1) @ wb.flatten(1).T + ba[:, None] * bb[None, :]
            wb_next = B[l + 1][0] if l + 1 == n_hidden else B[l + 1][0][perms[l + 1]]
            # + <W^A_{l+1}[:, i], W^B_{l+1}[:, j]>   (over the next layer's outputs)
            s = s + torch.einsum("oir,ojr->ij", A[l + 1][0], wb_next)
            new = torch.as_tensor(linear_sum_assignment(s.numpy(), maximize=True)[1], dtype=torch.long)
            rows = torch.arange(len(new))
            # accept only improvements (ties keep the old permutation)
            if not torch.equal(new, perms[l]) and s[rows, new].sum() > s[rows, perms[l]].sum() + 1e-12:
                perms[l], changed = new, True
        if not changed:
            break
    return perms


def align_to_common_reference(vectors: torch.Tensor, spec: Mapping, max_iter: int = 10, verbose: bool = False):
    r"""Match N networks to network 0, then all to :math:`\bar\theta = \frac1N\sum_k \pi_{P_k}(\theta_k)` until
    none changes (``max_iter`` rounds at most): ``(aligned (N, D), perms, networks changed per round)``."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    sds = [unflatten(v, spec) for v in vectors]

    def apply(perms):
        return torch.stack([v[permutation_index(spec, p)] for v, p in zip(vectors, perms)])

    identity = [torch.arange(shape[0]) for _, shape in param_shapes(spec)[::2][:-1]]
    perms = [identity] + [weight_matching(sds[0], sd, spec) for sd in sds[1:]]
    aligned, history = apply(perms), []
    for it in range(max_iter):
        ref = unflatten(aligned.mean(0), spec)
        new = [weight_matching(ref, sd, spec) for sd in sds]
        changed = sum(any(not torch.equal(a, b) for a, b in zip(p, q)) for p, q in zip(perms, new))
        history.append(int(changed))
        perms, aligned = new, apply(new)
        if verbose:
            print(f"  alignment round {it + 1}: {changed} of {len(sds)} networks changed their permutation")
        if changed == 0:
            break
    return aligned, perms, history


def interpolation_barriers(vectors_a: torch.Tensor, vectors_b: torch.Tensor, spec: Mapping,
                           x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Midpoint barrier of P pairs, :math:`B = \tfrac12(\mathrm{acc}(\theta_A)+\mathrm{acc}(\theta_B))
    - \mathrm{acc}(\tfrac12(\theta_A+\theta_B))` in points: ``barrier``, ``mid_acc``, ``end_acc`` (P,)."""
    a, b = torch.as_tensor(vectors_a, dtype=torch.float32), torch.as_tensor(vectors_b, dtype=torch.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (P, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    acc_a, acc_b, mid = classifiers.evaluate_vectors(torch.cat([a, b, 0.5 * (a + b)]), spec, x, y).split(len(a))
    end = 0.5 * (acc_a + acc_b)
    return {"barrier": end - mid, "mid_acc": mid, "end_acc": end}


# --- Building the zoo ---------------------------------------------------------------------------

ZOO_KINDS = ("trajectory", "multiseed", "wide")


def zoo_config(preset: str | None = None, kind: str = "trajectory", dataset: str | None = None, **overrides):
    """The zoo settings of a preset, kind and dataset: ``config.ZOO`` with ``ZOO_MULTISEED`` or
    ``ZOO_WIDE`` laid over it, then the dataset's overrides; keyword overrides must name existing keys."""
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
    """The batched augmentation of ``cfg["augment"]`` (:func:`helpers.data.augment_images`), or None."""
    if not cfg.get("augment"):
        return None
    return functools.partial(data.augment_images, dataset=cfg.get("dataset", "mnist"), **dict(cfg["augment"]))


def _vectors(params: Mapping[str, torch.Tensor], spec: Mapping) -> torch.Tensor:
    """Stacked parameters name -> (K, ...) as flat vectors (K, D) on the CPU."""
    return torch.cat([params[n].detach().reshape(params[n].shape[0], -1) for n, _ in param_shapes(spec)], 1).cpu()


def _zoo_data(cfg: Mapping):
    """(x, y) training images minus the validation split, (x_val, y_val), (x_test, y_test)."""
    dataset = cfg.get("dataset", "mnist")
    x_all, y_all = classifiers.load_split(dataset, "train")
    n_val = int(cfg["val_size"])
    x, y = x_all[:-n_val], y_all[:-n_val]
    if cfg.get("train_subset"):
        x, y = x[:cfg["train_subset"]], y[:cfg["train_subset"]]
    return (x, y), (x_all[-n_val:], y_all[-n_val:]), classifiers.load_split(dataset, "test", cfg.get("test_subset"))


def checkpoint_steps(total: int, n: int, first: int = 1) -> list[int]:
    r"""About ``n`` distinct steps from ``first`` to ``total``, :math:`s_i = \mathrm{round}(s_0 (T/s_0)^{i/(n-1)})`:
    dense early, where accuracy rises fast."""
    total, n, first = int(total), int(n), int(first)
    if total < 1 or n < 1 or not 1 <= first <= total:
        raise ValueError(f"expected total >= 1, n >= 1 and 1 <= first <= total, "
                         f"found total={total}, n={n}, first={first}")
    if n == 1:
        return [total]
    ratio = (total / first) ** (1.0 / (n - 1))
    return sorted({min(total, int(round(first * ratio ** i))) for i in range(n)})


def even_selection(values, lo: float, hi: float, n_bins: int, per_bin: int) -> torch.Tensor:
    """Sorted indices of a subset of ``values`` with a flat histogram over [lo, hi]: at most
    ``per_bin`` per bin, evenly spaced in rank within the bin; values outside are dropped."""
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
        idx = idx[torch.argsort(v[idx], stable=True)]
        if len(idx) > per_bin:
            idx = idx[torch.linspace(0, len(idx) - 1, int(per_bin)).round().long()]
        keep.append(idx)
    return torch.sort(torch.cat(keep)).values


def build_zoo(cfg: Mapping, verbose: bool = True) -> WeightDataset:
    """Train the zoo of ``cfg`` (the ``ZOO*`` blocks of :mod:`helpers.config`), all K runs together:

    - ``"trajectory"``: ``epochs``, then ``trajectory_epochs`` at ``trajectory_lr`` keeping evenly spaced
      checkpoints, aligned to run 0;
    - ``"multiseed"``: one-cycle runs keeping the last checkpoints, aligned to a common reference;
    - ``"wide"``: checkpoints at :func:`checkpoint_steps`, kept as an even spread of validation accuracy;
      the others drop checkpoints below ``min_val_acc`` on the validation split.
    """
    kind = cfg.get("kind", "trajectory")
    if kind not in ZOO_KINDS:
        raise ValueError(f"unknown zoo kind {kind!r}; expected one of {', '.join(ZOO_KINDS)}")
    spec = zoo_spec(cfg)
    (x, y), (x_val, y_val), (x_test, y_test) = _zoo_data(cfg)
    k, bs = int(cfg["n_runs"]), int(cfg["batch_size"])
    seeds = [int(cfg["seed"]) + r for r in range(k)]
    gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
    per_epoch = x.shape[0] // bs
    t0 = time.perf_counter()
    # shared_init: every run starts from run 0's initialisation and differs only in its data order
    params = classifiers.init_stacked(spec, [seeds[0]] * k if cfg.get("shared_init") else seeds)
    pre_losses, run_vectors = torch.zeros(0, k), None
    if kind == "trajectory":
        pre_losses, _ = classifiers.train_stacked(
            params, spec, x, y, epochs=cfg["epochs"], batch_size=bs, lr=cfg["lr"], generators=gens,
            augment_shift=cfg.get("augment_shift", 0), augment=zoo_augment(cfg), progress=verbose)
        run_vectors = _vectors(params, spec).clone()
        epochs = cfg["trajectory_epochs"]
        total, n_keep = int(round(epochs * per_epoch)), int(cfg["checkpoints_per_run"])
        every = max(1, total // n_keep)
        save_at = range(total - every * (min(n_keep, total) - 1), total + 1, every)
        train_kw = {"optimizer": classifiers.adam(params.values(), cfg["trajectory_lr"])}
    else:
        epochs = cfg["epochs"]
        total = int(round(epochs * per_epoch))
        if kind == "wide":
            save_at = checkpoint_steps(total, int(cfg["checkpoints_per_run"]), int(cfg["first_checkpoint"]))
        else:
            every = int(cfg["checkpoint_every"])
            save_at = [total - every * c for c in range(int(cfg["checkpoints_per_run"])) if total - every * c > 0]
        train_kw = {"lr": cfg["lr"], "lr_schedule": cfg["lr_schedule"], "warmup": cfg["warmup"]}
    # keep every network's weights after each step in save_at, with its mean loss since the last one
    save_at, snaps, snap_steps, snap_losses, window = set(save_at), [], [], [], []

    def on_step(step: int, step_losses: torch.Tensor) -> None:
        window.append(step_losses)
        if step in save_at:
            snaps.append(_vectors(params, spec).clone())
            snap_steps.append(step)
            snap_losses.append(torch.stack(window).mean(0))
            window.clear()

    losses, _ = classifiers.train_stacked(params, spec, x, y, epochs=epochs, batch_size=bs, generators=gens,
                                          augment_shift=cfg.get("augment_shift", 0), augment=zoo_augment(cfg),
                                          on_step=on_step, progress=verbose, **train_kw)
    if run_vectors is None:
        run_vectors = _vectors(params, spec).clone()
    train_seconds = time.perf_counter() - t0

    # alignment: one permutation per run, applied to the run's whole trajectory
    traj = torch.stack(snaps).transpose(0, 1).contiguous()          # (runs, checkpoints, D)
    perms, history = None, []
    if cfg.get("align", True):
        # multiseed: to a common reference; the others: to run 0 (no re-matching rounds)
        iters = int(cfg["align_iters"]) if kind == "multiseed" else 0
        _, perms, history = align_to_common_reference(run_vectors, spec, iters, verbose)
        for r in range(k):
            traj[r] = traj[r][:, permutation_index(spec, perms[r])]
    align_seconds = time.perf_counter() - t0 - train_seconds
    flat = traj.reshape(-1, traj.shape[-1]).contiguous()

    # selection on the validation split; the test split is only measured
    if kind == "wide":
        n_sel = int(cfg["select_val_size"] or x_val.shape[0])
        sel_acc = classifiers.evaluate_vectors(flat, spec, x_val[:n_sel], y_val[:n_sel])
        keep = even_selection(sel_acc, cfg["acc_lo"], cfg["acc_hi"], cfg["n_bins"], cfg["per_bin"])
        val_acc = classifiers.evaluate_vectors(flat[keep], spec, x_val, y_val)
        what = f"a validation accuracy in [{cfg['acc_lo']}, {cfg['acc_hi']}] %"
    else:
        val_all = classifiers.evaluate_vectors(flat, spec, x_val, y_val)
        keep = torch.nonzero(val_all >= cfg["min_val_acc"]).flatten()
        val_acc = val_all[keep]
        what = f"min_val_acc={cfg['min_val_acc']}"
    if len(keep) == 0:
        raise RuntimeError(f"no checkpoint reached {what}; lower it or train longer")
    test_acc = classifiers.evaluate_vectors(flat[keep], spec, x_test, y_test)
    metrics = []
    for j, i in enumerate(keep.tolist()):
        r, c = divmod(i, len(snaps))
        step = pre_losses.shape[0] + snap_steps[c]
        metrics.append({"run": r, "run_seed": seeds[r], "phase": kind, "epoch": round(step / per_epoch, 3),
                        "step": step, "train_loss": float(snap_losses[c][r]), "val_acc": float(val_acc[j]),
                        "test_acc": float(test_acc[j])})
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"{kind} zoo: {k} runs, kept {len(keep)} of {flat.shape[0]} checkpoints, "
              f"mean test acc {float(test_acc.mean()):.2f} %; {seconds:.0f} s")
    config = {**dict(cfg), "spec": spec, "build_seconds": round(seconds, 1), "train_seconds": round(train_seconds, 1),
              "align_seconds": round(align_seconds, 1), "align_history": history,
              "threads": torch.get_num_threads(), "pretrain_steps": pre_losses.shape[0], "steps_per_epoch": per_epoch,
              "perms": [[q.tolist() for q in p] for p in perms] if perms is not None else None}
    return WeightDataset(flat[keep].clone(), spec, metrics, config, run_vectors=run_vectors,
                         loss_curves=torch.cat([pre_losses, losses]).T.contiguous())


def train_fresh_networks(cfg: Mapping, n: int, seed_offset: int = 100_000) -> torch.Tensor:
    """``n`` new networks (n, D) trained with a many-seed zoo's recipe from seeds no zoo uses."""
    spec = zoo_spec(cfg)
    (x, y), _, _ = _zoo_data(cfg)
    seeds = [int(cfg["seed"]) + seed_offset + i for i in range(n)]
    params = classifiers.init_stacked(spec, seeds)
    classifiers.train_stacked(params, spec, x, y, epochs=cfg["epochs"], batch_size=int(cfg["batch_size"]),
                              lr=cfg["lr"], generators=[torch.Generator().manual_seed(1000 + s) for s in seeds],
                              augment_shift=cfg.get("augment_shift", 0), augment=zoo_augment(cfg),
                              lr_schedule=cfg["lr_schedule"], warmup=cfg["warmup"])
    return _vectors(params, spec).clone()


# settings that change nothing stored: what notebook 01 shows besides the zoo, and how many cores train
_NOT_TRAINING = ("interp_points", "scratch_steps", "threads")


def zoo_key(cfg: Mapping) -> dict:
    """The zoo's cache key: every setting that changes what is trained, and the resolved spec."""
    return {**{k: v for k, v in dict(cfg).items() if k not in _NOT_TRAINING}, "spec": zoo_spec(cfg)}


def zoo_path(cfg: Mapping) -> Path:
    """``<artifacts>/zoo-<config hash>.safetensors``."""
    return artifacts.artifact_path("zoo", zoo_key(cfg))


def build_or_load_zoo(cfg: Mapping, rebuild: bool = False, verbose: bool = True) -> WeightDataset:
    """The weight dataset of ``cfg``, loaded from the artifacts folder or built (:func:`build_zoo`)."""
    key = zoo_key(cfg)
    return artifacts.cached("zoo", key, build=lambda: build_zoo(cfg, verbose=verbose),
                            save=lambda ds, path: ds.save(path),
                            load=lambda path: WeightDataset.load(path, spec=key["spec"]),
                            rebuild=rebuild, verbose=verbose)
