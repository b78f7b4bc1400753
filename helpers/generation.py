r"""Generating network weights with latent diffusion: the pipeline of notebook 03 (reused by 05).

The recipe of p-diff ("Neural Network Diffusion"), small enough for a CPU:

1. a zoo of trained classifiers, each flattened to a vector :math:`w \in \mathbb R^D`
   (notebook 01, :func:`helpers.weights.build_or_load_zoo`);
2. an autoencoder that maps each :math:`w` to a latent :math:`z \in \mathbb R^L`, and
   the latents standardised to :math:`u = (z - \bar z)/s` (notebook 02,
   :func:`helpers.vae.build_or_load_vae`);
3. a diffusion model on :math:`u` (:mod:`helpers.diffusion`, :class:`helpers.denoisers.MLPDenoiser`),
   optionally conditioned on the checkpoint's test accuracy :math:`a`, standardised as
   :math:`c = (a - \bar a)/s_a`;
4. generation: DDIM from noise to a latent :math:`\hat u`, then the decoder
   :math:`\hat w = \mathrm{dec}(\bar z + s\hat u)` (:func:`helpers.vae.decode_to_vectors`).

The **direct baseline** skips step 2: the same diffusion runs on the
per-tensor-normalised weight vectors :math:`x = (w - m_k)/s_k` themselves
(:func:`build_or_load_direct_diffusion`, :func:`generate_direct`), as weight
diffusion without an autoencoder does (e.g. G.pt).

Trained denoisers are cached as safetensors under ``artifacts/``, keyed by the
configs that made them (zoo, VAE and this notebook's ``weight_diffusion`` section).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from . import artifacts, classifiers, diffusion, runtime, vae, weights
from .denoisers import MLPDenoiser
from .plots import new_axes


KINDS = {"latent": "latent_weight_denoiser", "direct": "direct_weight_denoiser"}
"""The artifact kind (:func:`helpers.artifacts.save_model`) of each of the two weight denoisers."""

# The settings that change what is trained: the cache keys. Sampling and display knobs
# (ddim_steps, eta, clip_x0, guidance, cond_quantiles, n_per_target, n_generated, n_test,
# gif_fps) are not among them, so changing one reuses the trained denoisers.
LATENT_TRAIN_KEYS = ("seed", "schedule", "T", "hidden", "n_blocks", "time_dim", "dropout", "conditional",
                     "p_uncond", "train_steps", "batch_size", "lr", "weight_decay", "warmup_steps",
                     "lr_schedule", "ema_decay")
DIRECT_TRAIN_KEYS = ("seed", "schedule", "T", "time_dim", "dropout", "batch_size", "weight_decay",
                     "warmup_steps", "lr_schedule", "ema_decay", "direct_input_skip", "direct_hidden",
                     "direct_n_blocks", "direct_train_steps", "direct_lr")

__all__ = [
    "KINDS", "LATENT_TRAIN_KEYS", "DIRECT_TRAIN_KEYS", "weight_diffusion_key", "direct_diffusion_key",
    "make_denoiser", "save_denoiser", "load_denoiser", "training_latents",
    "standardize_accuracy", "build_or_load_weight_diffusion", "build_or_load_direct_diffusion",
    "sample_latents", "generate_networks", "generate_direct", "decode_trajectory",
    "accuracy_targets_run", "NetworkFrameRenderer", "plot_achieved_vs_requested",
    "slider_frames", "checkpoint_accuracies", "loss_curve_figure",
    "plot_accuracy_hists", "plot_schedules",
]


# ---------------------------------------------------------------------------
# Building and saving denoisers
# ---------------------------------------------------------------------------

def make_denoiser(dim: int, diffusion_cfg: Mapping[str, Any], direct: bool = False) -> MLPDenoiser:
    """A fresh :class:`MLPDenoiser` for vectors of length ``dim`` with the sizes in ``diffusion_cfg``.

    ``direct=True`` uses the ``direct_*`` sizes and no conditioning (the baseline).
    """
    if direct:
        return MLPDenoiser(dim, hidden=diffusion_cfg["direct_hidden"], n_blocks=diffusion_cfg["direct_n_blocks"],
                           time_dim=diffusion_cfg["time_dim"], cond_kind=None, dropout=diffusion_cfg["dropout"],
                           input_skip=bool(diffusion_cfg.get("direct_input_skip", False)))
    return MLPDenoiser(dim, hidden=diffusion_cfg["hidden"], n_blocks=diffusion_cfg["n_blocks"],
                       time_dim=diffusion_cfg["time_dim"],
                       cond_kind="scalar" if diffusion_cfg["conditional"] else None,
                       dropout=diffusion_cfg["dropout"])


def save_denoiser(model: MLPDenoiser, path, info: Mapping[str, Any],
                  extra_tensors: Mapping[str, torch.Tensor] | None = None):
    """Weights, extra tensors, loss history and JSON-able ``info`` in one safetensors file
    (:func:`helpers.artifacts.save_model`; ``info["kind"]`` is ``"latent"`` or ``"direct"``)."""
    tensors = dict(extra_tensors or {})
    tensors["history.loss"] = torch.tensor(info["history"]["loss"], dtype=torch.float32)
    meta = {k: v for k, v in info.items() if k not in ("history", "kind")}
    return artifacts.save_model(path, model, KINDS[info["kind"]], model.config, tensors, meta)


def load_denoiser(path, dim: int | None = None, kind: str = "latent", device=None) -> tuple[MLPDenoiser, dict]:
    """Load a file written by :func:`save_denoiser`: ``(model in eval mode on device, info)``.

    ``kind`` (``"latent"`` or ``"direct"``) and ``dim`` (vector length, when given)
    are checked; a mismatch raises :class:`helpers.artifacts.ArtifactError`
    saying what was expected and what was found.
    """
    def make(arch):
        if dim is not None and int(arch["dim"]) != int(dim):
            raise artifacts.ArtifactError(
                f"{path}: denoiser for vectors of the wrong length: expected {int(dim)}, found {arch['dim']}")
        return MLPDenoiser(**arch)

    model, tensors, meta = artifacts.load_model(path, KINDS[kind], make, device=device,
                                                hint="Run notebook 03 to train it again.")
    info = {k: v for k, v in meta.items() if k != "arch"}
    info["kind"] = kind
    info["history"] = {"loss": tensors["history.loss"].tolist()}
    info["tensors"] = {k: v for k, v in tensors.items() if not k.startswith("history.")}
    info["path"] = str(path)
    return model, info


def _schedule(info: Mapping[str, Any]) -> diffusion.NoiseSchedule:
    return diffusion.NoiseSchedule.make(info["schedule"], int(info["T"]))


def _train(model, data, cond, diffusion_cfg, direct: bool, desc: str, device=None):
    """Train ``model`` on ``data`` (and ``cond``) on ``device`` (None: :func:`helpers.runtime.device`)."""
    device = runtime.device(device)
    sched = diffusion.NoiseSchedule.make(diffusion_cfg["schedule"], int(diffusion_cfg["T"]))
    gen = torch.Generator().manual_seed(int(diffusion_cfg["seed"]) + (1 if direct else 0))
    ema, history = diffusion.train_diffusion(
        model.to(device), data.to(device), sched,
        steps=int(diffusion_cfg["direct_train_steps"] if direct else diffusion_cfg["train_steps"]),
        batch_size=int(diffusion_cfg["batch_size"]),
        lr=float(diffusion_cfg["direct_lr"] if direct else diffusion_cfg["lr"]),
        ema_decay=float(diffusion_cfg["ema_decay"]), cond=cond,
        p_uncond=float(diffusion_cfg["p_uncond"]) if cond is not None else 0.0, generator=gen,
        weight_decay=float(diffusion_cfg["weight_decay"]), warmup_steps=int(diffusion_cfg["warmup_steps"]),
        lr_schedule=diffusion_cfg["lr_schedule"], desc=desc)
    return ema, history


# ---------------------------------------------------------------------------
# The latent diffusion model
# ---------------------------------------------------------------------------

def training_latents(vae_model, ds) -> torch.Tensor:
    r"""Standardised latents :math:`u` (N, L) of every checkpoint of the zoo ``ds``."""
    return vae_model.latent_standardizer.standardize(vae.encode_dataset(vae_model, ds))


def standardize_accuracy(acc, info: Mapping[str, Any]) -> torch.Tensor:
    r"""Accuracy in % → the denoiser's condition :math:`c = (a - \bar a)/s_a` (stats from training)."""
    acc = torch.as_tensor(acc, dtype=torch.float32)
    return (acc - float(info["cond_mean"])) / float(info["cond_std"])


def weight_diffusion_key(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                         diffusion_cfg: Mapping[str, Any]) -> dict:
    """The cache key of the latent denoiser: the VAE's key and the training settings
    (:data:`LATENT_TRAIN_KEYS`), never a sampling or display knob."""
    return {"vae": vae.vae_key(zoo_cfg, vae_cfg),
            "weight_diffusion": artifacts.training_key(diffusion_cfg, LATENT_TRAIN_KEYS)}


def direct_diffusion_key(zoo_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> dict:
    """The cache key of the direct denoiser: the zoo's key and :data:`DIRECT_TRAIN_KEYS`."""
    return {"zoo": weights.zoo_key(zoo_cfg),
            "direct_diffusion": artifacts.training_key(diffusion_cfg, DIRECT_TRAIN_KEYS)}


def build_or_load_weight_diffusion(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                                   diffusion_cfg: Mapping[str, Any], rebuild: bool = False, device=None):
    """The latent denoiser (EMA weights) trained by ``diffusion_cfg`` on the VAE latents: loaded or trained.

    Returns ``(ema_denoiser, info)``; ``info`` has ``history`` (per-step ``loss``),
    ``train_seconds``, ``schedule``, ``T``, ``cond_mean``/``cond_std`` (accuracy
    standardisation, % units), ``kind="latent"``, ``path``, and the objects it was
    built from: ``vae`` (the ParamVAE), ``vae_info`` and ``dataset`` (the zoo). Keyed by
    :func:`weight_diffusion_key`; trained and returned on ``device`` (None: the runtime's).
    """
    vae_model, vae_info = vae.build_or_load_vae(zoo_cfg, vae_cfg, device=device)
    ds = vae_info["dataset"]
    key = weight_diffusion_key(zoo_cfg, vae_cfg, diffusion_cfg)
    dim = int(vae_model.latent_dim)

    def build():
        torch.manual_seed(int(diffusion_cfg["seed"]))
        u = training_latents(vae_model, ds)
        acc = ds.test_acc.to(torch.float32)
        # \bar a, s_a: the accuracy condition is standardised like the latents
        cond_mean, cond_std = float(acc.mean()), float(acc.std().clamp_min(1e-3))
        cond = (acc - cond_mean) / cond_std if diffusion_cfg["conditional"] else None
        model = make_denoiser(dim, diffusion_cfg)
        ema, history = _train(model, u, cond, diffusion_cfg, direct=False, desc="latent diffusion", device=device)
        info = {"kind": "latent", "history": history, "train_seconds": history["seconds"],
                "schedule": diffusion_cfg["schedule"], "T": int(diffusion_cfg["T"]), "cond_mean": cond_mean,
                "cond_std": cond_std, "conditional": bool(diffusion_cfg["conditional"]),
                "n_train": int(u.shape[0]), "config": dict(diffusion_cfg)}
        return ema, info

    def save(obj, path):
        save_denoiser(obj[0], path, obj[1])

    def load(path):
        return load_denoiser(path, dim=dim, kind="latent", device=device)

    model, info = artifacts.cached("weight_diffusion", key, build=build, save=save, load=load,
                                   rebuild=rebuild)
    info = dict(info)
    info.update(path=str(artifacts.artifact_path("weight_diffusion", key)), vae=vae_model,
                vae_info=vae_info, dataset=ds)
    return model, info


def sample_latents(denoiser, info: Mapping[str, Any], n: int, steps: int = 50, eta: float = 0.0,
                   generator: torch.Generator | None = None, seed: int | None = None,
                   target_acc=None, guidance: float = 1.0, clip_x0: float | None = None,
                   noise: torch.Tensor | None = None, return_trajectory: bool = False):
    r"""``n`` standardised latents :math:`\hat u` (n, L) by DDIM (see :func:`helpers.diffusion.ddim_sample`).

    ``target_acc`` (a number or ``(n,)`` accuracies in %) conditions on the requested
    accuracy with guidance weight ``guidance``; None samples unconditionally.
    ``seed`` makes a fresh generator when ``generator`` is None. The noise is drawn on
    the CPU and the sampling runs on the denoiser's device; the latents (and a
    trajectory) are returned on the CPU.
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    cond = None
    if target_acc is not None:
        if not info.get("conditional", False):
            raise ValueError("this denoiser was trained without the accuracy condition "
                             "(weight_diffusion config conditional=False)")
        cond = standardize_accuracy(target_acc, info)
        if cond.ndim == 0:
            cond = cond.expand(n)
        cond = cond.to(runtime.device_of(denoiser))
    dim = denoiser.dim
    out = diffusion.ddim_sample(denoiser, _schedule(info), (n, dim), steps=steps, eta=eta, cond=cond,
                                guidance=guidance, noise=noise, generator=generator,
                                return_trajectory=return_trajectory, clip_x0=clip_x0)
    return (out[0].cpu(), out[1]) if return_trajectory else out.cpu()


def generate_networks(n: int, denoiser, vae_model, info: Mapping[str, Any], steps: int = 50,
                      eta: float = 0.0, generator: torch.Generator | None = None,
                      seed: int | None = None, target_acc=None, guidance: float = 1.0,
                      clip_x0: float | None = None, return_latents: bool = False):
    r"""``n`` new networks as raw weight vectors (n, D): DDIM latents → VAE decoder.

    :math:`\hat u \sim` DDIM(``steps``, :math:`\eta`), then
    :math:`\hat w = \mathrm{dec}(\bar z + s\,\hat u)` (:func:`helpers.vae.decode_to_vectors`).
    ``return_latents`` also returns :math:`\hat u`.
    """
    u = sample_latents(denoiser, info, n, steps=steps, eta=eta, generator=generator, seed=seed,
                       target_acc=target_acc, guidance=guidance, clip_x0=clip_x0)
    vectors = vae.decode_to_vectors(vae_model, u)
    return (vectors, u) if return_latents else vectors


# ---------------------------------------------------------------------------
# The direct baseline: diffusion on the normalised weight vectors
# ---------------------------------------------------------------------------

def build_or_load_direct_diffusion(zoo_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any],
                                   rebuild: bool = False, device=None):
    r"""The baseline: the same diffusion on normalised weight vectors :math:`x = (w - m_k)/s_k` (N, D).

    Unconditional, ``direct_*`` sizes. Returns ``(ema_denoiser, info)``; ``info``
    has ``history``, ``train_seconds``, ``schedule``, ``T``, ``kind="direct"``,
    ``normalizer`` (the :class:`helpers.weights.Normalizer` to map samples back)
    and ``dataset``. Keyed by :func:`direct_diffusion_key`; on ``device`` (None: the runtime's).
    """
    ds = weights.build_or_load_zoo(zoo_cfg)
    key = direct_diffusion_key(zoo_cfg, diffusion_cfg)
    dim = int(ds.vectors.shape[1])

    def build():
        torch.manual_seed(int(diffusion_cfg["seed"]) + 1)
        normalizer = weights.Normalizer().fit(ds.vectors, ds.spec)
        x = normalizer.normalize(ds.vectors)
        model = make_denoiser(dim, diffusion_cfg, direct=True)
        ema, history = _train(model, x, None, diffusion_cfg, direct=True, desc="direct diffusion", device=device)
        info = {"kind": "direct", "history": history, "train_seconds": history["seconds"],
                "schedule": diffusion_cfg["schedule"], "T": int(diffusion_cfg["T"]), "conditional": False,
                "n_train": int(x.shape[0]), "config": dict(diffusion_cfg)}
        extra = {f"normalizer.{k}": v for k, v in normalizer.state().items()}
        return ema, info, extra

    def save(obj, path):
        save_denoiser(obj[0], path, obj[1], extra_tensors=obj[2])

    def load(path):
        model, info = load_denoiser(path, dim=dim, kind="direct", device=device)
        return model, info, info.pop("tensors")

    model, info, extra = artifacts.cached("direct_diffusion", key, build=build, save=save,
                                          load=load, rebuild=rebuild)
    info = dict(info)
    info.pop("tensors", None)
    info["normalizer"] = weights.Normalizer.from_state(
        {k[len("normalizer."):]: v for k, v in extra.items() if k.startswith("normalizer.")})
    info.update(path=str(artifacts.artifact_path("direct_diffusion", key)), dataset=ds)
    return model, info


def generate_direct(n: int, denoiser, info: Mapping[str, Any], steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None, seed: int | None = None,
                    clip_x0: float | None = None) -> torch.Tensor:
    """``n`` networks (n, D) from the direct baseline: DDIM on normalised vectors, then denormalise."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    x = diffusion.ddim_sample(denoiser, _schedule(info), (n, denoiser.dim), steps=steps, eta=eta,
                              generator=generator, clip_x0=clip_x0)
    return info["normalizer"].denormalize(x.cpu())


# ---------------------------------------------------------------------------
# Accuracy-conditioned generation
# ---------------------------------------------------------------------------

def accuracy_targets_run(denoiser, vae_model, info, targets, n_per_target: int, evaluate,
                         steps: int = 50, eta: float = 0.0, guidance: float = 1.0,
                         seed: int = 0, clip_x0: float | None = None) -> dict[str, np.ndarray]:
    """Generate ``n_per_target`` networks per requested accuracy and measure them.

    ``evaluate(vectors) -> accuracies %`` (e.g. a closure over
    :func:`helpers.classifiers.evaluate_vectors`). Returns ``requested`` and
    ``achieved`` arrays of equal length (one entry per network).
    """
    targets = [float(t) for t in targets]
    requested = torch.tensor(targets).repeat_interleave(n_per_target)
    vectors = generate_networks(len(requested), denoiser, vae_model, info, steps=steps, eta=eta,
                                seed=seed, target_acc=requested, guidance=guidance, clip_x0=clip_x0)
    achieved = torch.as_tensor(evaluate(vectors), dtype=torch.float32)
    return {"requested": requested.numpy(), "achieved": achieved.numpy()}


def plot_achieved_vs_requested(requested, achieved, train_acc=None, ax=None, title: str | None = None):
    """Achieved vs requested accuracy: each network a dot, medians per target, the diagonal."""
    fig, ax = new_axes(ax, figsize=(4.8, 4.2))
    req, ach = np.asarray(requested, float), np.asarray(achieved, float)
    jitter = (np.arange(len(req)) % 7 - 3) * 0.03
    ax.scatter(req + jitter, ach, s=14, alpha=0.6, label="generated network")
    targets = np.unique(req)
    ax.plot(targets, [np.median(ach[req == t]) for t in targets], "o-", color="C3", label="median")
    lo = min(req.min(), ach.min()) - 0.5
    hi = max(req.max(), ach.max()) + 0.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="achieved = requested")
    if train_acc is not None:
        ta = np.asarray(train_acc, float)
        ax.axhspan(np.percentile(ta, 5), np.percentile(ta, 95), color="0.85", alpha=0.5, zorder=0,
                   label="training checkpoints (5-95 %)")
    ax.set_xlabel("requested test accuracy (%)")
    ax.set_ylabel("achieved test accuracy (%)")
    ax.set_ylim(max(lo, ach.min() - 1), hi)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------
# The denoising slider: one sampling run, decoded step by step
# ---------------------------------------------------------------------------

def decode_trajectory(trajectory, vae_model, index: int = 0, key: str = "x_t") -> torch.Tensor:
    """Raw weight vectors (steps+1, D) of sample ``index`` along a DDIM trajectory.

    ``key="x_t"`` decodes the current latent at each step, ``"x0_pred"`` the
    model's guess of the final latent :math:`\\hat u_0`.
    """
    u = torch.stack([entry[key][index] for entry in trajectory])
    return vae.decode_to_vectors(vae_model, u)


class NetworkFrameRenderer:
    """Draws slider/GIF frames (RGB uint8) of networks: first-layer filters and the weight histogram.

    The figure is built once and only its data change from frame to frame
    (much faster than a new figure per frame). ``reference`` (a training
    checkpoint's vector) is drawn as a grey histogram behind, so the reader
    sees the generated weights settle on the trained ones.
    """

    def __init__(self, spec: Mapping, hist_range=(-1.0, 1.0), reference: torch.Tensor | None = None,
                 dpi: int = 80, n_bins: int = 60):
        import matplotlib.pyplot as plt

        self.spec, self.dpi = spec, dpi
        self.bins = np.linspace(hist_range[0], hist_range[1], n_bins + 1)
        self.range = hist_range
        n = self._filters(torch.zeros(1, classifiers.count_params(spec)))[0].shape[0]
        ncol = max(4, (n + 1) // 2)
        self.fig = plt.figure(figsize=(6.4, 2.6), dpi=dpi)
        grid = self.fig.add_gridspec(2, ncol + 5)
        self.images = []
        for i in range(n):
            ax = self.fig.add_subplot(grid[i // ncol, i % ncol])
            self.images.append(ax.imshow(np.zeros((2, 2)), cmap="RdBu_r", vmin=-1, vmax=1))
            ax.set_axis_off()
        ax = self.hist_ax = self.fig.add_subplot(grid[:, ncol + 1:])
        if reference is not None:
            ax.hist(reference.numpy().clip(*hist_range), bins=self.bins, color="0.7", label="a checkpoint")
        counts = np.ones(n_bins)
        (self.line,) = ax.step(self.bins, np.r_[counts, counts[-1]], where="post", color="C0", lw=1.5,
                               label="this network")
        ax.set_yscale("log")
        ax.set_ylim(0.8, None)
        ax.set_xlim(*hist_range)
        ax.set_xlabel("weight value", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
        self.title = self.fig.suptitle("", fontsize=9)
        self.fig.subplots_adjust(left=0.02, right=0.98, bottom=0.18, top=0.86)
        self._ymax = ax.get_ylim()[1]

    def _filters(self, vector: torch.Tensor) -> torch.Tensor:
        params = weights.unflatten(vector.detach().reshape(1, -1), self.spec)
        first = next(iter(params.values()))[0]        # the first layer's weight tensor
        if first.ndim == 4:                           # conv (out, in, k, k): input channel 0
            return first[:, 0][None]
        side = int(round(first.shape[1] ** 0.5))      # fc (out, in): first rows as images
        return first[:8, : side * side].reshape(1, -1, side, side)

    def render(self, vector: torch.Tensor, title: str) -> np.ndarray:
        """The frame of one network (a raw weight vector (D,))."""
        filters = self._filters(vector)[0]
        vmax = float(filters.abs().max()) or 1.0
        for im, f in zip(self.images, filters):
            im.set_data(f.numpy())
            im.set_clim(-vmax, vmax)
        counts, _ = np.histogram(vector.detach().numpy().clip(*self.range), bins=self.bins)
        counts = np.maximum(counts, 0.8)
        self.line.set_ydata(np.r_[counts, counts[-1]])
        self.hist_ax.set_ylim(0.8, max(self._ymax, counts.max() * 1.5))
        self.title.set_text(title)
        self.fig.canvas.draw()
        return np.asarray(self.fig.canvas.buffer_rgba())[..., :3].copy()

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.fig)


def slider_frames(trajectory, vae_model, spec: Mapping, evaluate, reference: torch.Tensor | None = None,
                  index: int = 0, dpi: int = 80):
    r"""Frames of one sampling run for the slider, the GIF and the grid.

    For each DDIM step k the current latent :math:`u_{t_k}` is decoded into a
    network; ``evaluate(vectors) -> accuracies %`` measures all of them in one
    batched call. Returns ``(frames, captions, accuracies)``: RGB arrays from
    :meth:`NetworkFrameRenderer.render`, one caption per frame, and a float array.
    """
    vectors = decode_trajectory(trajectory, vae_model, index=index, key="x_t")
    acc = np.asarray(torch.as_tensor(evaluate(vectors), dtype=torch.float32))
    ref = reference if reference is not None else vectors[-1]
    lo, hi = np.percentile(ref.numpy(), [0.5, 99.5])
    pad = 0.25 * (hi - lo)
    n_steps = len(trajectory) - 1
    renderer = NetworkFrameRenderer(spec, (lo - pad, hi + pad), reference, dpi)
    frames, captions = [], []
    for k, (entry, v) in enumerate(zip(trajectory, vectors)):
        t = entry["t"]
        where = f"step {k}/{n_steps}, t = {t}" if t >= 0 else f"step {k}/{n_steps}, done"
        caption = f"{where}: decoded network {acc[k]:.1f} % test accuracy"
        captions.append(caption)
        frames.append(renderer.render(v, caption))
    renderer.close()
    return frames, captions, acc


def checkpoint_accuracies(ds, zoo_cfg: Mapping[str, Any], n_test, evaluate) -> torch.Tensor:
    """Test accuracies (%) of the zoo's checkpoints on the test images notebook 03 uses.

    Reuses the accuracies notebook 01 measured when it used the same test images
    (``zoo_cfg["test_subset"] == n_test``); evaluates the checkpoints otherwise.
    """
    if zoo_cfg.get("test_subset") == n_test:
        return ds.test_acc.to(torch.float32)
    return torch.as_tensor(evaluate(ds.vectors), dtype=torch.float32)


def loss_curve_figure(histories: Mapping[str, Mapping[str, list]], ax=None, window: int | None = None):
    """Per-step training loss (faint) and its moving average, one colour per model; log scale."""
    fig, ax = new_axes(ax, figsize=(6.4, 3.6))
    for i, (name, hist) in enumerate(histories.items()):
        loss = np.asarray(hist["loss"], float)
        w = window or max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(loss)), loss, color=f"C{i}", alpha=0.2, lw=0.5)
        ax.plot(np.arange(w - 1, len(loss)), smooth, color=f"C{i}", label=f"{name} ({w}-step mean)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(r"$\|\epsilon - \epsilon_\theta(x_t, t)\|^2$ per coordinate")
    ax.legend(fontsize=8)
    return fig


def plot_accuracy_hists(accuracies: Mapping[str, Any], ax=None, bins: int = 30,
                        xlabel: str = "MNIST test accuracy (%)"):
    """Histograms of test accuracies (%) of several sets of networks, on shared bins
    (``xlabel``: the dataset's accuracy label, ``config.dataset_info(...).acc_label``)."""
    fig, ax = new_axes(ax, figsize=(6.4, 3.6))
    arrays = {k: np.asarray(torch.as_tensor(v, dtype=torch.float32)) for k, v in accuracies.items()}
    allv = np.concatenate(list(arrays.values()))
    edges = np.linspace(allv.min() - 0.5, allv.max() + 0.5, bins + 1)
    for i, (name, a) in enumerate(arrays.items()):
        ax.hist(a, bins=edges, alpha=0.5, color=f"C{i}", density=True,
                label=f"{name} (n={len(a)}, median {np.median(a):.2f} %)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return fig


def plot_schedules(schedules: Mapping[str, diffusion.NoiseSchedule], ax=None):
    r""":math:`\sqrt{\bar\alpha_t}` (signal kept) of several schedules against :math:`t/T`."""
    fig, ax = new_axes(ax, figsize=(5.2, 3.4))
    for name, s in schedules.items():
        ax.plot(np.arange(s.T) / s.T, s.sqrt_alphas_cumprod.numpy(), label=f"{name} (T={s.T})")
    ax.set_xlabel("t / T")
    ax.set_ylabel(r"signal kept $\sqrt{\bar\alpha_t}$")
    ax.legend(fontsize=8)
    return fig
