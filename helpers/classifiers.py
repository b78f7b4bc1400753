"""Small image classifiers, trained fast on a CPU, and evaluated many at a time.

The networks of this series are the *data* of later notebooks: notebook 01
trains a zoo of them, notebook 02 compresses their weights, notebook 03
generates new weights, and notebooks 02, 03 and 05 evaluate hundreds of weight
vectors on the 10,000 MNIST test images. Three ideas make this fast on two CPU
cores:

1. **Data as tensors.** The whole training split is one uint8 tensor in memory,
   normalised once to float32, ``x = (x/255 - \\mu) / \\sigma``. A minibatch is
   ``x[idx]`` for a random index batch ``idx``: no DataLoader, no PIL image,
   no per-sample Python.
2. **One pure forward function.** A network is fully described by a JSON-able
   *spec* (``{"arch": "cnn", "channels": [8, 16], ...}``) and a dict of
   parameter tensors. :func:`forward` computes the logits from ``(params, x)``;
   :class:`Classifier` is the ``nn.Module`` that holds the parameters and calls
   it. Because the forward pass is a plain function of the parameters, the
   same computation can run K stacked parameter sets at once
   (:func:`stacked_forward`: one grouped convolution per layer).
3. **Many networks per call.** :func:`evaluate_vectors` evaluates K flat weight
   vectors (the rows of a weight dataset);
   :func:`train_stacked` trains K networks together: the loss is
   :math:`\\sum_k L_k(\\theta_k)`, whose gradient with respect to
   :math:`\\theta_k` is just :math:`\\nabla L_k`, and Adam is elementwise, so
   one optimiser over the stacked tensors *is* K independent Adams.

Architectures (``spec["arch"]``):

- ``"cnn"``: ``len(channels)`` blocks of conv(k x k, stride s) -> ReLU
  (-> 2x2 max-pool if ``pool``), then fully connected layers
  ``hidden`` -> ``n_classes``.
- ``"mlp"``: flatten -> fully connected ``hidden`` layers with ReLU -> ``n_classes``.

Parameter names are ``conv0.weight, conv0.bias, ..., fc0.weight, ...`` in
forward order; :mod:`helpers.weights` flattens them in exactly this order.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import data, runtime

# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------

_IMAGE = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "catdog": (3, 32)}
_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "catdog": 2}


def default_spec(dataset: str = "mnist", arch: str = "cnn") -> dict:
    """The series' default architecture for ``dataset`` ("mnist", "fashion_mnist", "cifar10").

    MNIST / Fashion-MNIST CNN (11,250 parameters, about 98.5 % on MNIST after a few
    epochs): conv 5x5 stride 2 (1 -> 8 channels, 28 -> 12 px), conv 3x3
    stride 2 (8 -> 16, 12 -> 5 px), fc 400 -> 24, fc 24 -> 10. Strided
    convolutions instead of pooling keep a forward pass at about 67k
    multiply-adds, so hundreds of networks can be evaluated in seconds.

    CIFAR-10: a tiny LeNet-style CNN, the one of the PyTorch CIFAR-10 tutorial
    (conv 5x5 3 -> 6, pool, conv 5x5 6 -> 16, pool, fc 400 -> 120 -> 84 -> 10;
    62,006 parameters). The weight story's CIFAR-10 zoo uses a smaller one (11,178
    parameters), set as its ``spec`` in ``config.WEIGHT_DATASETS``.

    MLP: one hidden layer of 16 units (12,730 parameters on MNIST).
    """
    if dataset not in _IMAGE:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(_IMAGE)}")
    c, size = _IMAGE[dataset]
    n_classes = _CLASSES[dataset]
    if arch == "mlp":
        return {"arch": "mlp", "in_channels": c, "image_size": size, "hidden": [16],
                "n_classes": n_classes}
    if arch != "cnn":
        raise ValueError(f"unknown arch {arch!r}; expected 'cnn' or 'mlp'")
    if c == 3:
        return {"arch": "cnn", "in_channels": 3, "image_size": 32, "channels": [6, 16],
                "kernel_size": 5, "stride": 1, "pool": True, "hidden": [120, 84],
                "n_classes": n_classes}
    return {"arch": "cnn", "in_channels": c, "image_size": size, "channels": [8, 16],
            "kernel_size": [5, 3], "stride": 2, "pool": False, "hidden": [24],
            "n_classes": n_classes}


def _per_layer(value, n: int, name: str) -> list[int]:
    """An int or a list of ``n`` ints -> a list of ``n`` ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"spec[{name!r}] has {len(value)} entries, expected {n}")
        return [int(v) for v in value]
    return [int(value)] * n


def _hidden(spec: Mapping) -> list[int]:
    h = spec.get("hidden", [])
    return [int(h)] if isinstance(h, (int, float)) else [int(v) for v in h]


def conv_layout(spec: Mapping) -> list[dict]:
    """Per conv block: in/out channels, kernel, stride, padding, pool, output size."""
    channels = list(spec.get("channels", []))
    n = len(channels)
    ks = _per_layer(spec.get("kernel_size", 3), n, "kernel_size")
    strides = _per_layer(spec.get("stride", 1), n, "stride")
    pads = _per_layer(spec.get("padding", 0), n, "padding")
    pool = bool(spec.get("pool", False))
    size, c_in, out = int(spec["image_size"]), int(spec["in_channels"]), []
    for c, k, s, p in zip(channels, ks, strides, pads):
        # output size of a convolution: floor((H + 2p - k) / s) + 1
        size = (size + 2 * p - k) // s + 1
        if pool:
            size //= 2
        if size < 1:
            raise ValueError(f"spec {describe(spec)} shrinks the image to nothing")
        out.append({"in": c_in, "out": int(c), "k": k, "stride": s, "padding": p,
                    "pool": pool, "size": size})
        c_in = int(c)
    return out


def describe(spec: Mapping) -> str:
    """A one-line description of a spec, used in error messages."""
    return json.dumps(dict(spec), sort_keys=True)


def param_shapes(spec: Mapping) -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, shape), ...]`` of a spec's parameters, in forward (= flattening) order."""
    arch = spec.get("arch")
    c, size = int(spec["in_channels"]), int(spec["image_size"])
    shapes: list[tuple[str, tuple[int, ...]]] = []
    if arch == "cnn":
        layout = conv_layout(spec)
        for i, layer in enumerate(layout):
            shapes.append((f"conv{i}.weight", (layer["out"], layer["in"], layer["k"], layer["k"])))
            shapes.append((f"conv{i}.bias", (layer["out"],)))
        n_in = layout[-1]["out"] * layout[-1]["size"] ** 2 if layout else c * size * size
    elif arch == "mlp":
        n_in = c * size * size
    else:
        raise ValueError(f"unknown arch {arch!r} in spec {describe(spec)}; expected 'cnn' or 'mlp'")
    widths = _hidden(spec) + [int(spec["n_classes"])]
    for i, w in enumerate(widths):
        shapes.append((f"fc{i}.weight", (w, n_in)))
        shapes.append((f"fc{i}.bias", (w,)))
        n_in = w
    return shapes


def count_params(spec: Mapping) -> int:
    """D, the number of parameters of a spec (the length of its flat weight vector)."""
    return sum(math.prod(s) for _, s in param_shapes(spec))


def unflatten(vector: torch.Tensor, spec: Mapping) -> dict[str, torch.Tensor]:
    """The inverse of :func:`helpers.weights.flatten`: vector (..., D) -> {name: tensor (..., *shape)}.

    Leading dimensions are kept, so a (K, D) batch gives stacked parameters.
    The tensors are views of ``vector`` (no copy).
    """
    shapes = param_shapes(spec)
    d = sum(math.prod(s) for _, s in shapes)
    vector = torch.as_tensor(vector)
    if vector.ndim == 0 or vector.shape[-1] != d:
        found = "a scalar" if vector.ndim == 0 else f"{vector.shape[-1]} (shape {tuple(vector.shape)})"
        raise ValueError(f"expected D={d} parameters for {describe(spec)}, got {found}")
    lead = tuple(vector.shape[:-1])
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = vector[..., i:i + n].reshape(lead + tuple(shape))
        i += n
    return out


# ---------------------------------------------------------------------------
# The network: one pure function, one thin module
# ---------------------------------------------------------------------------

def forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, spec: Mapping) -> torch.Tensor:
    """Logits of the network ``spec`` with parameters ``params`` on images ``x`` (N, C, H, W).

    A pure function of ``params``; :func:`stacked_forward` is the same computation
    for K stacked parameter sets.
    """
    h = x
    if spec["arch"] == "cnn":
        for i, layer in enumerate(conv_layout(spec)):
            h = F.conv2d(h, params[f"conv{i}.weight"], params[f"conv{i}.bias"],
                         stride=layer["stride"], padding=layer["padding"])
            h = F.relu(h)
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
    """An ``nn.Module`` holding the parameters of ``spec``; ``forward`` is :func:`forward`.

    Submodules ``conv0, conv1, ..., fc0, fc1, ...`` are ordinary ``nn.Conv2d``
    and ``nn.Linear`` (so PyTorch's default initialisation applies), and the
    state dict names are ``conv0.weight``, ``conv0.bias``, ... in forward order.
    """

    def __init__(self, spec: Mapping):
        super().__init__()
        self.spec = dict(spec)
        for i, layer in enumerate(conv_layout(spec) if spec["arch"] == "cnn" else []):
            conv = nn.Conv2d(layer["in"], layer["out"], layer["k"], layer["stride"], layer["padding"])
            self.add_module(f"conv{i}", conv)
        shapes = dict(param_shapes(spec))
        n_fc = len(_hidden(spec)) + 1
        for i in range(n_fc):
            out_f, in_f = shapes[f"fc{i}.weight"]
            self.add_module(f"fc{i}", nn.Linear(in_f, out_f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(dict(self.named_parameters()), x, self.spec)


def build_model(spec: Mapping, seed: int | None = None) -> Classifier:
    """A freshly initialised network for ``spec`` (PyTorch's default init; seeded if given)."""
    if seed is None:
        return Classifier(spec)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Classifier(spec)


# ---------------------------------------------------------------------------
# Data in memory
# ---------------------------------------------------------------------------

def load_split(dataset: str, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: a split as normalised float32 (N, C, H, W) and int64 labels, first ``n`` only.

    Normalisation happens once, here: ``x = (x_{uint8}/255 - \\mu) / \\sigma``.
    """
    x, y = data.load_tensors(dataset, split)
    if n is not None:
        x, y = x[:n], y[:n]
    return data.normalize(x, dataset).contiguous(), y.clone()


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Data augmentation: translate each image by up to ``max_shift`` pixels (zero fill).

    Batched: pad once, then gather every image's window with one advanced index.
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=float(x.min()))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]        # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]        # (n, 1, 1, w)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows, cols]


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where PyTorch supports it (measured ~25 % faster per
    step for these small networks on CPU), else the default implementation."""
    params = list(params)
    if all(p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, schedule: str = "constant", warmup: float = 0.0) -> float:
    r"""Learning-rate multiplier before optimiser step ``step`` (0-based) of ``total``.

    ``warmup``: fraction of the steps with a linear ramp :math:`(t+1)/t_w`; then
    ``"constant"`` keeps 1, ``"cosine"`` decays as :math:`\tfrac12(1+\cos\pi p)` and
    ``"linear"`` as :math:`1-p`, with :math:`p = (t-t_w)/(T-t_w)` the progress after warm-up
    (a one-cycle schedule, which reaches a given accuracy in fewer epochs than a constant rate).
    """
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
                 batch_size: int = 128, lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None,
                 generator: torch.Generator | None = None, augment_shift: int = 0,
                 on_step: Callable[[int, float], None] | None = None,
                 progress: bool = False, lr_schedule: str = "constant",
                 warmup: float = 0.0) -> list[float]:
    """Train ``model`` in place with Adam on in-memory tensors; return the per-step losses.

    ``x`` is already normalised (see :func:`load_split`). Each epoch draws a
    random permutation of the N indices and walks it in batches of
    ``batch_size`` (the last, short batch is dropped). ``epochs`` may be
    fractional (e.g. 0.5 = half an epoch of steps). ``on_step(step, loss)`` is
    called after every optimiser step (for checkpointing). Pass ``optimizer``
    to continue training with its state. ``lr_schedule``/``warmup``: see
    :func:`lr_factor` (the default keeps ``lr`` constant). Each batch is cut and
    augmented on the CPU, then moved to the model's device.
    """
    lr_factor(0, 1, lr_schedule)                      # checks the name
    dev = runtime.device_of(model)
    opt = optimizer or adam(model.parameters(), lr)
    base_lr = lr if optimizer is None else opt.param_groups[0]["lr"]
    n = x.shape[0]
    per_epoch = n // batch_size
    total = int(round(epochs * per_epoch))
    losses: list[float] = []
    model.train()
    step = 0
    bar = runtime.progress(total=total, desc="training", disable=not progress or None)
    while step < total:
        perm = torch.randperm(n, generator=generator)
        for b in range(per_epoch):
            if step >= total:
                break
            idx = perm[b * batch_size:(b + 1) * batch_size]
            xb = random_shift(x[idx], augment_shift, generator) if augment_shift else x[idx]
            if lr_schedule != "constant" or warmup:
                _set_lr(opt, base_lr * lr_factor(step, total, lr_schedule, warmup))
            # L = -(1/B) \sum_i \log softmax(f(x_i))_{y_i}
            loss = F.cross_entropy(model(xb.to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            bar.update(1)
    bar.close()
    return losses


def init_stacked(spec: Mapping, seeds: Iterable[int]) -> dict[str, torch.Tensor]:
    """Parameters of K freshly initialised networks (one per seed), stacked: name -> (K, ...)."""
    models = [build_model(spec, seed=s) for s in seeds]
    return {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
            for name, _ in param_shapes(spec)}


def to_grouped(x: torch.Tensor) -> torch.Tensor:
    """K image batches (K, B, C, H, W) as one batch of K*C-channel images (B, K*C, H, W),
    channel ``k*C + c`` = channel c of network k's batch, in channels-last memory order.

    This is the input of a grouped convolution with ``groups=K``: group k sees only
    network k's images. Channels-last (memory order B, H, W, channel) is the layout in
    which PyTorch's CPU grouped convolutions are fast: on the 2-core machine a training
    step of 8 stacked CNNs took about 0.7x the time of the same step in NCHW order
    (``benchmarks/bench_zoo_training.py``).
    """
    k, b, c, h, w = x.shape
    # (K, B, C, H, W) -> (B, H, W, K, C): one copy, then a view with NCHW sizes
    return x.permute(1, 3, 4, 0, 2).contiguous().view(b, h, w, k * c).permute(0, 3, 1, 2)


def stacked_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, spec: Mapping,
                    shared_input: bool = False) -> torch.Tensor:
    """Logits of K stacked networks: params name -> (K, ...); x (K, B, C, H, W) or shared (B, C, H, W).

    Returns (K, B, n_classes), equal up to float rounding to :func:`forward` of each
    network on its own batch. A CNN's K convolutions run as one grouped convolution
    (``groups=K``) on :func:`to_grouped` images; each fully connected layer is one
    batched matrix product, :math:`h_k W_k^\top + b_k` for all k at once (``baddbmm``).
    """
    k = next(iter(params.values())).shape[0]
    if shared_input:
        x = x.unsqueeze(0).expand(k, *x.shape)
    b = x.shape[1]
    layout = conv_layout(spec) if spec["arch"] == "cnn" else []
    if layout:
        h = to_grouped(x)
        for i, layer in enumerate(layout):
            w = params[f"conv{i}.weight"]                                   # (K, out, in, k, k)
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), params[f"conv{i}.bias"].reshape(-1),
                         stride=layer["stride"], padding=layer["padding"], groups=k)
            if i == len(layout) - 1:
                h = h.contiguous()     # NCHW before the flatten (a fast ReLU backward, too)
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
                  progress: bool = False, lr_schedule: str = "constant",
                  warmup: float = 0.0, chunk: int | None = 8,
                  augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                  device=None) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """Train K networks at once (stacked parameters, each with its own data order).

    ``params``: name -> (K, ...) leaf tensors, updated in place (see
    :func:`init_stacked`). Minimises :math:`\\sum_k L_k(\\theta_k)`; since
    :math:`\\partial/\\partial\\theta_k` of the sum is :math:`\\nabla L_k` and Adam
    acts elementwise, this is exactly K independent Adam runs. ``generators``
    (one per network) fix each network's shuffling. ``on_step(step, losses)``
    receives the K minibatch losses. Returns ``(losses (steps, K), optimizer)``;
    pass the optimizer back in to continue with its state.

    Network k draws its shuffling *and* its augmentation shifts from
    ``generators[k]`` in the same order as :func:`train_epochs` does, so network
    k here follows, up to float rounding, the single run
    ``train_epochs(model_k, ..., generator=generators[k])`` with the same
    ``lr_schedule`` (tested in ``tests/test_classifiers.py``).

    ``augment(images, generator)``: a batched augmentation applied to each network's
    minibatch with that network's generator (after the shifts), e.g.
    :func:`helpers.data.augment_images` for CIFAR-10's flips, crops and colour jitter.

    ``chunk``: the forward and backward passes run ``chunk`` networks at a time
    (each chunk one grouped computation; their gradients fill disjoint rows),
    then one Adam step updates all K. The result does not depend on it; the
    speed does: on the 2-core machine, with 64 MNIST CNNs and batch 128, 8 networks per
    chunk took 0.9 ms per network-step, 16 took 1.0 and 64 at once 1.3-1.4 (the
    activations stay in cache). None = all K at once.

    ``device`` (None: :func:`helpers.runtime.device`): where the networks train. Parameters
    elsewhere are moved there (the entries of ``params`` are replaced by the moved
    tensors); batches are cut and augmented on the CPU and moved; the returned
    losses are on the CPU.
    """
    device = runtime.device(device)
    for name, p in params.items():
        if p.device != device:
            params[name] = p.detach().to(device)
    for p in params.values():
        p.requires_grad_(True)
    k = next(iter(params.values())).shape[0]
    generators = generators or [torch.Generator().manual_seed(i) for i in range(k)]
    if len(generators) != k:
        raise ValueError(f"expected one generator per network ({k}), got {len(generators)}")
    lr_factor(0, 1, lr_schedule)                      # checks the name
    chunk = k if not chunk else int(chunk)
    opt = optimizer or adam(params.values(), lr)
    base_lr = lr if optimizer is None else opt.param_groups[0]["lr"]
    n = x.shape[0]
    per_epoch = n // batch_size
    total = int(round(epochs * per_epoch))
    history = []
    step = 0
    bar = runtime.progress(total=total, desc=f"training {k} networks", disable=not progress or None)
    while step < total:
        perms = torch.stack([torch.randperm(n, generator=g) for g in generators])   # (K, N)
        for b in range(per_epoch):
            if step >= total:
                break
            idx = perms[:, b * batch_size:(b + 1) * batch_size]                       # (K, B)
            if lr_schedule != "constant" or warmup:
                _set_lr(opt, base_lr * lr_factor(step, total, lr_schedule, warmup))
            opt.zero_grad(set_to_none=True)
            parts = []
            for a in range(0, k, chunk):
                # the chunk's minibatches are cut (and augmented) here, so they stay in cache
                gens = generators[a:a + chunk]
                xb = x[idx[a:a + chunk]]                                              # (K', B, C, H, W)
                if augment_shift:
                    xb = torch.stack([random_shift(xb[j], augment_shift, g) for j, g in enumerate(gens)])
                if augment is not None:
                    xb = torch.stack([augment(xb[j], g) for j, g in enumerate(gens)])
                xb, yb = xb.to(device), y[idx[a:a + chunk]].to(device)
                sub = params if chunk >= k else {n: p[a:a + chunk] for n, p in params.items()}
                logits = stacked_forward(sub, xb, spec)                              # (K', B, classes)
                # per-network mean cross-entropy L_k, then \sum_k L_k
                part = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
                part = part.view(logits.shape[0], -1).mean(1)
                part.sum().backward()            # gradients of each chunk land in its rows of params
                parts.append(part.detach())
            losses = torch.cat(parts)
            opt.step()
            step += 1
            history.append(losses.detach().cpu())
            if on_step is not None:
                on_step(step, history[-1])
            bar.update(1)
    bar.close()
    return (torch.stack(history) if history else torch.zeros(0, k)), opt


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Accuracy of ``model`` on normalised images ``x`` with labels ``y``, in % (batches run on
    the model's device)."""
    model.eval()
    dev = runtime.device_of(model)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        pred = model(x[i:i + batch_size].to(dev)).argmax(1).cpu()
        correct += int((pred == y[i:i + batch_size].cpu()).sum())
    return 100.0 * correct / max(1, x.shape[0])


@torch.no_grad()
def predict_vectors(vectors: torch.Tensor, spec: Mapping, x: torch.Tensor,
                    batch_size: int = 1000, method: str = "loop", device=None) -> torch.Tensor:
    """Predicted labels of K networks given as flat weight vectors: LongTensor (K, N).

    ``method="loop"`` runs :func:`forward` network by network on batches of
    ``batch_size`` images; ``"stacked"`` runs chunks of 10 networks together with
    :func:`stacked_forward` (grouped convolutions on K copies of the batch). On the
    2-core reference machine the loop was measured 3-4x faster for evaluating the
    default CNN (11.7 against 40 ms per network on the 10,000 test images), so it is
    the default. (Training is the other way round: see :func:`train_stacked`.) The networks and the image
    batches run on ``device`` (None: :func:`helpers.runtime.device`); the labels are
    returned on the CPU.
    """
    device = runtime.device(device)
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    k = vectors.shape[0]
    params = unflatten(vectors.to(device), spec)     # name -> (K, ...), checks D
    out = torch.empty(k, x.shape[0], dtype=torch.long)
    if method == "stacked":
        m = 10
        for a in range(0, k, m):
            chunk = {name: p[a:a + m] for name, p in params.items()}
            for i in range(0, x.shape[0], batch_size):
                logits = stacked_forward(chunk, x[i:i + batch_size].to(device), spec, shared_input=True)
                out[a:a + m, i:i + batch_size] = logits.argmax(-1).cpu()
        return out
    if method != "loop":
        raise ValueError(f"unknown method {method!r}; expected 'loop' or 'stacked'")
    for j in range(k):
        theta = {name: p[j].contiguous() for name, p in params.items()}
        for i in range(0, x.shape[0], batch_size):
            out[j, i:i + batch_size] = forward(theta, x[i:i + batch_size].to(device), spec).argmax(-1).cpu()
    return out


@torch.no_grad()
def evaluate_vectors(vectors: torch.Tensor, spec: Mapping, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000, method: str = "loop", device=None) -> torch.Tensor:
    """Accuracies (in %) of K networks given as flat weight vectors (K, D): a float tensor (K,),
    computed on ``device`` (None: :func:`helpers.runtime.device`), returned on the CPU.

    :math:`\\mathrm{acc}_k = 100 \\cdot \\frac{1}{N} \\sum_i [\\arg\\max f_{\\theta_k}(x_i) = y_i]`
    """
    pred = predict_vectors(vectors, spec, x, batch_size, method, device=device)
    return 100.0 * (pred == y[None].cpu()).float().mean(1)
