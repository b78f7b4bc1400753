r"""Small image classifiers, trained fast on a CPU and evaluated many at a time (notebook 01).

A network is a JSON-able *spec* plus parameters ``conv0.weight, ..., fc0.weight, ...`` in flattening order;
:func:`train_stacked` trains K networks as one computation: :math:`\nabla_{\theta_k} \sum_j L_j = \nabla L_k`.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import data, runtime

_IMAGE = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "catdog": (3, 32)}
_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "catdog": 2}


def default_spec(dataset: str = "mnist", arch: str = "cnn") -> dict:
    """Conv 5x5/2 (8 channels), conv 3x3/2 (16), fc 24, fc classes (11,250 weights on MNIST); or an MLP."""
    if dataset not in _IMAGE:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(_IMAGE)}")
    c, size = _IMAGE[dataset]
    base = {"in_channels": c, "image_size": size, "n_classes": _CLASSES[dataset]}
    if arch == "mlp":
        return {"arch": "mlp", **base, "hidden": [16]}
    if arch != "cnn":
        raise ValueError(f"unknown arch {arch!r}; expected 'cnn' or 'mlp'")
    return {"arch": "cnn", **base, "channels": [8, 16], "kernel_size": [5, 3], "stride": 2, "pool": False,
            "hidden": [24]}


def describe(spec: Mapping) -> str:
    return json.dumps(dict(spec), sort_keys=True)


def _per_layer(value, n: int, name: str) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"spec[{name!r}] has {len(value)} entries, expected {n}")
        return [int(v) for v in value]
    return [int(value)] * n


def _hidden(spec: Mapping) -> list[int]:
    h = spec.get("hidden", [])
    return [int(h)] if isinstance(h, (int, float)) else [int(v) for v in h]


def conv_layout(spec: Mapping) -> list[dict]:
    """Per conv block: in/out channels, kernel, stride, pool and output size."""
    channels = list(spec.get("channels", []))
    n = len(channels)
    ks = _per_layer(spec.get("kernel_size", 3), n, "kernel_size")
    strides = _per_layer(spec.get("stride", 1), n, "stride")
    pool = bool(spec.get("pool", False))
    size, c_in, out = int(spec["image_size"]), int(spec["in_channels"]), []
    for c, k, s in zip(channels, ks, strides):
        # output size of a convolution: floor((H - k) / s) + 1
        size = (size - k) // s + 1
        if pool:
            size //= 2
        if size < 1:
            raise ValueError(f"spec {describe(spec)} shrinks the image to nothing")
        out.append({"in": c_in, "out": int(c), "k": k, "stride": s, "pool": pool, "size": size})
        c_in = int(c)
    return out


def param_shapes(spec: Mapping) -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, shape), ...]`` of a spec's parameters, in forward (= flattening) order."""
    arch = spec.get("arch")
    if arch not in ("cnn", "mlp"):
        raise ValueError(f"unknown arch {arch!r} in spec {describe(spec)}; expected 'cnn' or 'mlp'")
    layout = conv_layout(spec) if arch == "cnn" else []
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i, layer in enumerate(layout):
        shapes.append((f"conv{i}.weight", (layer["out"], layer["in"], layer["k"], layer["k"])))
        shapes.append((f"conv{i}.bias", (layer["out"],)))
    c, size = int(spec["in_channels"]), int(spec["image_size"])
    n_in = layout[-1]["out"] * layout[-1]["size"] ** 2 if layout else c * size * size
    for i, w in enumerate(_hidden(spec) + [int(spec["n_classes"])]):
        shapes += [(f"fc{i}.weight", (w, n_in)), (f"fc{i}.bias", (w,))]
        n_in = w
    return shapes


def count_params(spec: Mapping) -> int:
    """D, the length of a spec's flat weight vector."""
    return sum(math.prod(s) for _, s in param_shapes(spec))


def unflatten(vector: torch.Tensor, spec: Mapping) -> dict[str, torch.Tensor]:
    """The inverse of :func:`helpers.weights.flatten`: (..., D) -> {name: (..., *shape)}, as views."""
    shapes = param_shapes(spec)
    d = sum(math.prod(s) for _, s in shapes)
    vector = torch.as_tensor(vector)
    if vector.ndim == 0 or vector.shape[-1] != d:
        found = "a scalar" if vector.ndim == 0 else f"{vector.shape[-1]} (shape {tuple(vector.shape)})"
        raise ValueError(f"expected D={d} parameters for {describe(spec)}, got {found}")
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = vector[..., i:i + n].reshape(tuple(vector.shape[:-1]) + tuple(shape))
        i += n
    return out


def forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, spec: Mapping) -> torch.Tensor:
    """Logits of network ``spec`` with parameters ``params`` on images ``x`` (N, C, H, W)."""
    h = x
    if spec["arch"] == "cnn":
        for i, layer in enumerate(conv_layout(spec)):
            h = F.relu(F.conv2d(h, params[f"conv{i}.weight"], params[f"conv{i}.bias"],
                                stride=layer["stride"]))
            if layer["pool"]:
                h = F.max_pool2d(h, 2)
    h = h.flatten(1)
    n_fc = len(_hidden(spec)) + 1
    for i in range(n_fc):
        h = F.linear(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"])
        if i < n_fc - 1:
            h = F.relu(h)
    return h


class Classifier(nn.Module):
    """``nn.Conv2d``/``nn.Linear`` submodules ``conv0, ..., fc0, ...``; ``forward`` is :func:`forward`."""

    def __init__(self, spec: Mapping):
        super().__init__()
        self.spec = dict(spec)
        for i, layer in enumerate(conv_layout(spec) if spec["arch"] == "cnn" else []):
            self.add_module(f"conv{i}", nn.Conv2d(layer["in"], layer["out"], layer["k"], layer["stride"]))
        shapes = dict(param_shapes(spec))
        for i in range(len(_hidden(spec)) + 1):
            out_f, in_f = shapes[f"fc{i}.weight"]
            self.add_module(f"fc{i}", nn.Linear(in_f, out_f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(dict(self.named_parameters()), x, self.spec)


def build_model(spec: Mapping, seed: int | None = None) -> Classifier:
    """A freshly initialised network for ``spec`` (seeded if given, without touching the global RNG)."""
    if seed is None:
        return Classifier(spec)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Classifier(spec)


def load_split(dataset: str, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: a split normalised once, ``x = (x_{uint8}/255 - mu)/sigma``; the first ``n`` if given."""
    x, y = data.load_tensors(dataset, split)
    if n is not None:
        x, y = x[:n], y[:n]
    return data.normalize(x, dataset).contiguous(), y.clone()


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` > 0 pixels (filled with the minimum), batched."""
    n, c, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=float(x.min()))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]        # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]        # (n, 1, 1, w)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel on CPU and CUDA (faster for these small networks)."""
    params = list(params)
    return torch.optim.Adam(params, lr=lr, fused=all(p.device.type in ("cpu", "cuda") for p in params) or None)


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, schedule: str = "constant", warmup: float = 0.0) -> float:
    r"""Learning-rate multiplier before step ``step`` of ``total``: a linear warm-up over a ``warmup`` fraction,
    then 1 (constant), :math:`\tfrac12(1+\cos\pi p)` (cosine) or :math:`1-p` (linear), p: progress after it."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    t_w = int(round(warmup * total))
    if step < t_w:
        return (step + 1) / t_w
    if schedule == "constant":
        return 1.0
    p = (step - t_w) / max(1, total - t_w)
    return 0.5 * (1 + math.cos(math.pi * p)) if schedule == "cosine" else 1.0 - p


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float = 1,
                 batch_size: int = 128, lr: float = 1e-3, generator: torch.Generator | None = None,
                 augment_shift: int = 0, progress: bool = False, lr_schedule: str = "constant",
                 warmup: float = 0.0) -> list[float]:
    """Train ``model`` in place with Adam on in-memory tensors, a fresh permutation per epoch (the
    short last batch dropped); return the step losses. Notebook 01 writes this loop from scratch."""
    lr_factor(0, 1, lr_schedule)                      # checks the name
    dev = runtime.device_of(model)
    opt = adam(model.parameters(), lr)
    per_epoch = x.shape[0] // batch_size
    total = int(round(epochs * per_epoch))
    losses: list[float] = []
    model.train()
    bar = runtime.progress(total=total, desc="training", disable=not progress or None)
    while len(losses) < total:
        perm = torch.randperm(x.shape[0], generator=generator)
        for b in range(min(per_epoch, total - len(losses))):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            xb = random_shift(x[idx], augment_shift, generator) if augment_shift else x[idx]
            if lr_schedule != "constant" or warmup:
                _set_lr(opt, lr * lr_factor(len(losses), total, lr_schedule, warmup))
            # L = -(1/B) \sum_i \log softmax(f(x_i))_{y_i}
            loss = F.cross_entropy(model(xb.to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            runtime.check_finite(losses[-1], model="classifier", step=len(losses), blame=f"lr={lr}")
            bar.update(1)
    bar.close()
    return losses


def init_stacked(spec: Mapping, seeds: Iterable[int]) -> dict[str, torch.Tensor]:
    """Parameters of K fresh networks (one per seed), stacked: name -> (K, ...)."""
    models = [dict(build_model(spec, seed=s).named_parameters()) for s in seeds]
    return {name: torch.stack([m[name].detach() for m in models]) for name, _ in param_shapes(spec)}


def stacked_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, spec: Mapping,
                    shared_input: bool = False) -> torch.Tensor:
    """Logits (K, B, classes) of K stacked networks on x (K, B, C, H, W) or on a shared (B, C, H, W)."""
    k = next(iter(params.values())).shape[0]
    if shared_input:
        x = x.unsqueeze(0).expand(k, *x.shape)
    b = x.shape[1]
    layout = conv_layout(spec) if spec["arch"] == "cnn" else []
    if layout:
        # (K, B, C, H, W) -> (B, K*C, H, W): channel k*C + c is channel c of network k, laid out
        # channels-last in memory (where CPU grouped convolutions are fast)
        c, hh, ww = x.shape[2:]
        h = x.permute(1, 3, 4, 0, 2).contiguous().view(b, hh, ww, k * c).permute(0, 3, 1, 2)
        for i, layer in enumerate(layout):
            w = params[f"conv{i}.weight"]                                   # (K, out, in, k, k)
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), params[f"conv{i}.bias"].reshape(-1),
                         stride=layer["stride"], groups=k)
            if i == len(layout) - 1:
                h = h.contiguous()     # NCHW before the flatten
            h = F.relu(h)
            if layer["pool"]:
                h = F.max_pool2d(h, 2)
        h = h.reshape(b, k, -1).transpose(0, 1)                             # (K, B, features)
    else:
        h = x.reshape(k, b, -1)
    n_fc = len(_hidden(spec)) + 1
    for i in range(n_fc):
        # h_k W_k^T + b_k for every network k
        h = torch.baddbmm(params[f"fc{i}.bias"].unsqueeze(1), h, params[f"fc{i}.weight"].transpose(1, 2))
        if i < n_fc - 1:
            h = F.relu(h)
    return h


def train_stacked(params: dict[str, torch.Tensor], spec: Mapping, x: torch.Tensor, y: torch.Tensor,
                  epochs: float = 1, batch_size: int = 128, lr: float = 1e-3,
                  optimizer: torch.optim.Optimizer | None = None,
                  generators: list[torch.Generator] | None = None, augment_shift: int = 0,
                  on_step: Callable[[int, torch.Tensor], None] | None = None,
                  progress: bool = False, lr_schedule: str = "constant", warmup: float = 0.0,
                  chunk: int | None = 8,
                  augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                  device=None) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """Train K stacked networks (params name -> (K, ...), in place); network k follows
    ``train_epochs(..., generator=generators[k])`` up to float rounding. ``chunk`` networks run per
    pass (speed only). Returns ``(losses (steps, K), optimizer)``."""
    device = runtime.device(device)
    for name, p in params.items():
        params[name] = (p if p.device == device else p.detach().to(device)).requires_grad_(True)
    k = next(iter(params.values())).shape[0]
    generators = generators or [torch.Generator().manual_seed(i) for i in range(k)]
    if len(generators) != k:
        raise ValueError(f"expected one generator per network ({k}), got {len(generators)}")
    lr_factor(0, 1, lr_schedule)                      # checks the name
    chunk = k if not chunk else int(chunk)
    opt = optimizer or adam(params.values(), lr)
    base_lr = lr if optimizer is None else opt.param_groups[0]["lr"]
    per_epoch = x.shape[0] // batch_size
    total = int(round(epochs * per_epoch))
    history: list[torch.Tensor] = []
    bar = runtime.progress(total=total, desc=f"training {k} networks", disable=not progress or None)
    while len(history) < total:
        perms = torch.stack([torch.randperm(x.shape[0], generator=g) for g in generators])   # (K, N)
        for b in range(min(per_epoch, total - len(history))):
            idx = perms[:, b * batch_size:(b + 1) * batch_size]                       # (K, B)
            if lr_schedule != "constant" or warmup:
                _set_lr(opt, base_lr * lr_factor(len(history), total, lr_schedule, warmup))
            opt.zero_grad(set_to_none=True)
            parts = []
            for a in range(0, k, chunk):
                gens = generators[a:a + chunk]
                xb = x[idx[a:a + chunk]]                                              # (K', B, C, H, W)
                if augment_shift:
                    xb = torch.stack([random_shift(xb[j], augment_shift, g) for j, g in enumerate(gens)])
                if augment is not None:
                    xb = torch.stack([augment(xb[j], g) for j, g in enumerate(gens)])
                xb, yb = xb.to(device), y[idx[a:a + chunk]].to(device)
                sub = params if chunk >= k else {nm: p[a:a + chunk] for nm, p in params.items()}
                logits = stacked_forward(sub, xb, spec)                              # (K', B, classes)
                # per-network mean cross-entropy L_k, then \sum_k L_k
                part = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
                part = part.view(logits.shape[0], -1).mean(1)
                part.sum().backward()            # each chunk's gradients land in its own rows
                parts.append(part.detach())
            opt.step()
            history.append(torch.cat(parts).cpu())
            if on_step is not None:
                on_step(len(history), history[-1])
            bar.update(1)
        # once per epoch (cheap): stop a diverging run at its first NaN/inf loss, naming the network
        recent = torch.stack(history[-per_epoch:])                                    # (steps, K)
        bad = (~torch.isfinite(recent)).nonzero()                                     # (step, network) pairs
        if len(bad):
            s, j = bad[0].tolist()
            runtime.check_finite(recent[s, j], model=f"stacked classifier {j} of {k}",
                                 step=len(history) - len(recent) + s + 1, blame=f"lr={base_lr}")
    bar.close()
    return (torch.stack(history) if history else torch.zeros(0, k)), opt


@torch.no_grad()
def predict_vectors(vectors: torch.Tensor, spec: Mapping, x: torch.Tensor,
                    batch_size: int = 1000, device=None) -> torch.Tensor:
    """Predicted labels (K, N) of K flat weight vectors, one network at a time (faster than stacked)."""
    device = runtime.device(device)
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    params = unflatten((vectors[None] if vectors.ndim == 1 else vectors).to(device), spec)   # (K, ...), checks D
    k = next(iter(params.values())).shape[0]
    out = torch.empty(k, x.shape[0], dtype=torch.long)
    for j in range(k):
        theta = {name: p[j].contiguous() for name, p in params.items()}
        for i in range(0, x.shape[0], batch_size):
            out[j, i:i + batch_size] = forward(theta, x[i:i + batch_size].to(device), spec).argmax(-1).cpu()
    return out


@torch.no_grad()
def evaluate_vectors(vectors: torch.Tensor, spec: Mapping, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000, device=None) -> torch.Tensor:
    r"""Accuracies in % (K,) of K flat weight vectors:
    :math:`\mathrm{acc}_k = 100 \cdot \frac{1}{N} \sum_i [\arg\max f_{\theta_k}(x_i) = y_i]`."""
    pred = predict_vectors(vectors, spec, x, batch_size, device=device)
    return 100.0 * (pred == y[None].cpu()).float().mean(1)
