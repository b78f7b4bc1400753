r"""Generating network weights with latent diffusion (p-diff's recipe): notebook 03's cached pipeline, reused by 05.

An :class:`helpers.denoisers.MLPDenoiser` on the standardised VAE latents of the zoo (optionally conditioned on
accuracy), DDIM, then the decoder; and the *direct* baseline on the normalised weight vectors.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from . import artifacts, classifiers, config, diffusion, runtime, vae, weights
from .denoisers import MLPDenoiser

KINDS = {"latent": "latent_weight_denoiser", "direct": "direct_weight_denoiser"}  # artifact kinds

# The settings that change what is trained (the cache keys); sampling and display knobs are not among them.
LATENT_TRAIN_KEYS = ("seed", "schedule", "T", "hidden", "n_blocks", "time_dim", "dropout", "conditional",
                     "p_uncond", "train_steps", "batch_size", "lr", "weight_decay", "warmup_steps",
                     "lr_schedule", "ema_decay")
DIRECT_TRAIN_KEYS = ("seed", "schedule", "T", "time_dim", "dropout", "batch_size", "weight_decay",
                     "warmup_steps", "lr_schedule", "ema_decay", "direct_input_skip", "direct_hidden",
                     "direct_n_blocks", "direct_train_steps", "direct_lr")
CONDITIONS = ("test_acc", "val_acc", "decoded_val_acc")  # what the latent denoiser may be conditioned on


# --- Denoisers: build, save, load, train ---
def make_denoiser(dim: int, diffusion_cfg: Mapping[str, Any], direct: bool = False) -> MLPDenoiser:
    """A fresh :class:`MLPDenoiser` for vectors of length ``dim`` (``direct``: the baseline's sizes, unconditional)."""
    c = diffusion_cfg
    if direct:
        return MLPDenoiser(dim, hidden=c["direct_hidden"], n_blocks=c["direct_n_blocks"], time_dim=c["time_dim"],
                           dropout=c["dropout"], input_skip=bool(c.get("direct_input_skip", False)))
    return MLPDenoiser(dim, hidden=c["hidden"], n_blocks=c["n_blocks"], time_dim=c["time_dim"],
                       cond_kind="scalar" if c["conditional"] else None, dropout=c["dropout"])


def save_denoiser(model, path, info: Mapping[str, Any], extra_tensors: Mapping[str, torch.Tensor] | None = None):
    """Weights, extra tensors, loss history and ``info`` in one file (an x0-network is stored as itself)."""
    if isinstance(model, diffusion.EpsFromX0):
        model = model.x0_model
    tensors = dict(extra_tensors or {})
    tensors["history.loss"] = torch.tensor(info["history"]["loss"], dtype=torch.float32)
    meta = {k: v for k, v in info.items() if k not in ("history", "kind")}
    return artifacts.save_model(path, model, KINDS[info["kind"]], model.config, tensors, meta)


def load_denoiser(path, dim: int | None = None, kind: str = "latent", device=None):
    """``(model in eval mode, info)`` from :func:`save_denoiser`'s file (an x0-network wrapped in ``EpsFromX0``)."""
    def make(arch):
        if dim is not None and int(arch["dim"]) != int(dim):
            raise artifacts.ArtifactError(
                f"{path}: denoiser for vectors of the wrong length: expected {int(dim)}, found {arch['dim']}")
        return MLPDenoiser(**arch)

    model, tensors, meta = artifacts.load_model(path, KINDS[kind], make, device=device,
                                                hint="Run notebook 03 to train it again.")
    info = {k: v for k, v in meta.items() if k != "arch"}
    info.update(kind=kind, history={"loss": tensors["history.loss"].tolist()}, path=str(path),
                tensors={k: v for k, v in tensors.items() if not k.startswith("history.")})
    if prediction_of(info) == "x0":
        model = diffusion.EpsFromX0(model, _schedule(info))
    return model, info


def _schedule(info: Mapping[str, Any]) -> diffusion.NoiseSchedule:
    return diffusion.NoiseSchedule.make(info["schedule"], int(info["T"]))


def prediction_of(diffusion_cfg: Mapping[str, Any]) -> str:
    """What the latent denoiser predicts: ``"eps"`` (the default, also when the key is absent) or ``"x0"``."""
    prediction = diffusion_cfg.get("prediction", "eps")
    if prediction not in ("eps", "x0"):
        raise ValueError(f"prediction: expected one of 'eps', 'x0', found {prediction!r}")
    return prediction


def _train(model, data, cond, diffusion_cfg, direct: bool, desc: str, device=None):
    """Train on ``device`` with :func:`helpers.diffusion.train_diffusion` (x0-loss if the config says so)."""
    device = runtime.device(device)
    c = diffusion_cfg
    sched = diffusion.NoiseSchedule.make(c["schedule"], int(c["T"]))
    x0_pred = not direct and prediction_of(c) == "x0"
    loss_fn = None
    if x0_pred:
        sched_dev = sched.to(device)
        loss_fn = lambda m, x0, cd, p, g: diffusion.x0_loss(m, sched_dev, x0, cd, p_uncond=p, generator=g)  # noqa: E731
    ema, history = diffusion.train_diffusion(
        model.to(device), data.to(device), sched,
        steps=int(c["direct_train_steps"] if direct else c["train_steps"]), batch_size=int(c["batch_size"]),
        lr=float(c["direct_lr"] if direct else c["lr"]), ema_decay=float(c["ema_decay"]), cond=cond,
        p_uncond=float(c["p_uncond"]) if cond is not None else 0.0,
        generator=torch.Generator().manual_seed(int(c["seed"]) + (1 if direct else 0)),
        weight_decay=float(c["weight_decay"]), warmup_steps=int(c["warmup_steps"]),
        lr_schedule=c["lr_schedule"], desc=desc, loss_fn=loss_fn, name=f"the {desc} denoiser")
    return (diffusion.EpsFromX0(ema, sched) if x0_pred else ema), history


def _cached(kind: str, key, build, dim: int, denoiser_kind: str, rebuild: bool, device):
    """``(model, info, extra tensors)`` of :func:`helpers.artifacts.cached` with the denoiser's save and load."""
    def load(path):
        model, info = load_denoiser(path, dim=dim, kind=denoiser_kind, device=device)
        return model, info, info.pop("tensors")

    model, info, extra = artifacts.cached(kind, key, build=build, load=load, rebuild=rebuild,
                                          save=lambda obj, path: save_denoiser(obj[0], path, obj[1], obj[2]))
    return model, {**info, "path": str(artifacts.artifact_path(kind, key))}, extra


def _info(kind, history, diffusion_cfg, n_train, **more) -> dict:
    return {"kind": kind, "history": history, "train_seconds": history["seconds"],
            "schedule": diffusion_cfg["schedule"], "T": int(diffusion_cfg["T"]), "n_train": int(n_train),
            "config": dict(diffusion_cfg), **more}


# --- The latent diffusion model ---
def training_latents(vae_model, ds) -> torch.Tensor:
    r"""Standardised latents :math:`u` (N, L) of every checkpoint of the zoo ``ds``."""
    return vae_model.latent_standardizer.standardize(vae.encode_dataset(vae_model, ds))


def weight_diffusion_key(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                         diffusion_cfg: Mapping[str, Any]) -> dict:
    """The latent denoiser's cache key: the VAE's key, :data:`LATENT_TRAIN_KEYS`, a non-``"eps"`` prediction."""
    key = {"vae": vae.vae_key(zoo_cfg, vae_cfg),
           "weight_diffusion": artifacts.training_key(diffusion_cfg, LATENT_TRAIN_KEYS)}
    if prediction_of(diffusion_cfg) != "eps":
        key["weight_diffusion"]["prediction"] = prediction_of(diffusion_cfg)
    return key


def direct_diffusion_key(zoo_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any]) -> dict:
    """The direct denoiser's cache key: the zoo's key and :data:`DIRECT_TRAIN_KEYS`."""
    return {"zoo": weights.zoo_key(zoo_cfg), "direct_diffusion": artifacts.training_key(diffusion_cfg, DIRECT_TRAIN_KEYS)}


def _condition_values(condition, vae_model, ds, zoo_cfg) -> torch.Tensor:
    if condition == "decoded_val_acc":
        # what the decoder really makes of each latent, measured on the validation split
        _, (x_val, y_val), _ = weights._zoo_data(zoo_cfg)
        return classifiers.evaluate_vectors(vae.reconstruct(vae_model, ds), ds.spec, x_val, y_val).float()
    return ds.column(condition).to(torch.float32)


def build_or_load_weight_diffusion(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                                   diffusion_cfg: Mapping[str, Any], rebuild: bool = False, device=None,
                                   condition: str = "test_acc"):
    """``(ema_denoiser, info)``: the latent denoiser of ``diffusion_cfg``, loaded or trained, conditioned on one of
    :data:`CONDITIONS` (``"decoded_val_acc"``: each checkpoint's accuracy as the VAE reconstructs it, returned
    as ``info["condition_values"]``); ``info`` also has the history, ``cond_mean``/``cond_std`` and the VAE."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}")
    if condition != "test_acc" and not diffusion_cfg["conditional"]:
        raise ValueError("expected a conditional weight_diffusion config (conditional=True), found False")
    vae_model, vae_info = vae.build_or_load_vae(zoo_cfg, vae_cfg, device=device)
    ds = vae_info["dataset"]
    key, kind = weight_diffusion_key(zoo_cfg, vae_cfg, diffusion_cfg), "weight_diffusion"
    if condition != "test_acc":
        key, kind = {**key, "condition": condition}, "conditioned_diffusion"
    dim = int(vae_model.latent_dim)

    def build():
        torch.manual_seed(int(diffusion_cfg["seed"]))
        u = training_latents(vae_model, ds)
        acc = _condition_values(condition, vae_model, ds, zoo_cfg)
        # \bar a, s_a: the accuracy condition is standardised like the latents
        cond_mean, cond_std = float(acc.mean()), float(acc.std().clamp_min(1e-3))
        cond = (acc - cond_mean) / cond_std if diffusion_cfg["conditional"] else None
        ema, history = _train(make_denoiser(dim, diffusion_cfg), u, cond, diffusion_cfg, direct=False,
                              desc="latent diffusion", device=device)
        info = _info("latent", history, diffusion_cfg, len(u), cond_mean=cond_mean, cond_std=cond_std,
                     conditional=bool(diffusion_cfg["conditional"]), prediction=prediction_of(diffusion_cfg))
        if condition != "test_acc":
            info["condition"] = condition
        return ema, info, ({"condition_values": acc} if condition != "test_acc" else {})

    model, info, extra = _cached(kind, key, build, dim, "latent", rebuild, device)
    info.update(vae=vae_model, vae_info=vae_info, dataset=ds)
    if "condition_values" in extra:
        info["condition_values"] = extra["condition_values"].numpy()
    return model, info


def sample_latents(denoiser, info: Mapping[str, Any], n: int, steps: int = 50, eta: float = 0.0,
                   generator: torch.Generator | None = None, seed: int | None = None,
                   target_acc=None, guidance: float = 1.0, clip_x0: float | None = None,
                   noise: torch.Tensor | None = None, return_trajectory: bool = False):
    r"""``n`` standardised latents :math:`\hat u` (n, L) by DDIM on the CPU (and a trajectory if asked);
    ``target_acc`` (%, a number or (n,)) conditions with weight ``guidance``; ``seed``: a fresh generator."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    cond = None
    if target_acc is not None:
        if not info.get("conditional", False):
            raise ValueError("this denoiser was trained without the accuracy condition "
                             "(weight_diffusion config conditional=False)")
        # c = (a - mean a) / s_a with the training set's statistics
        cond = (torch.as_tensor(target_acc, dtype=torch.float32) - float(info["cond_mean"])) / float(info["cond_std"])
        cond = (cond.expand(n) if cond.ndim == 0 else cond).to(runtime.device_of(denoiser))
    out = diffusion.ddim_sample(denoiser, _schedule(info), (n, denoiser.dim), steps=steps, eta=eta, cond=cond,
                                guidance=guidance, noise=noise, generator=generator,
                                return_trajectory=return_trajectory, clip_x0=clip_x0)
    return (out[0].cpu(), out[1]) if return_trajectory else out.cpu()


def generate_networks(n: int, denoiser, vae_model, info: Mapping[str, Any], steps: int = 50,
                      eta: float = 0.0, generator: torch.Generator | None = None,
                      seed: int | None = None, target_acc=None, guidance: float = 1.0,
                      clip_x0: float | None = None, return_latents: bool = False):
    r"""``n`` new networks (n, D): DDIM latents (:func:`sample_latents`), then the VAE decoder."""
    u = sample_latents(denoiser, info, n, steps=steps, eta=eta, generator=generator, seed=seed,
                       target_acc=target_acc, guidance=guidance, clip_x0=clip_x0)
    vectors = vae.decode_to_vectors(vae_model, u)
    return (vectors, u) if return_latents else vectors


def accuracy_targets_run(denoiser, vae_model, info, targets, n_per_target: int, evaluate,
                         steps: int = 50, eta: float = 0.0, guidance: float = 1.0,
                         seed: int = 0, clip_x0: float | None = None) -> dict[str, np.ndarray]:
    """``n_per_target`` networks per requested accuracy, measured by ``evaluate(vectors) -> %``:
    ``{"requested", "achieved"}`` arrays, one entry per network."""
    requested = torch.tensor([float(t) for t in targets]).repeat_interleave(n_per_target)
    vectors = generate_networks(len(requested), denoiser, vae_model, info, steps=steps, eta=eta,
                                seed=seed, target_acc=requested, guidance=guidance, clip_x0=clip_x0)
    return {"requested": requested.numpy(), "achieved": np.asarray(torch.as_tensor(evaluate(vectors)).float())}


# --- The direct baseline: diffusion on the normalised weight vectors ---
def build_or_load_direct_diffusion(zoo_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any],
                                   rebuild: bool = False, device=None):
    r"""The same diffusion on :math:`x = (w - m_k)/s_k` (unconditional, ``direct_*`` sizes): ``(ema, info)``
    with ``info["normalizer"]`` to map samples back."""
    ds = weights.build_or_load_zoo(zoo_cfg)
    key, dim = direct_diffusion_key(zoo_cfg, diffusion_cfg), int(ds.vectors.shape[1])

    def build():
        torch.manual_seed(int(diffusion_cfg["seed"]) + 1)
        normalizer = weights.Normalizer().fit(ds.vectors, ds.spec)
        x = normalizer.normalize(ds.vectors)
        ema, history = _train(make_denoiser(dim, diffusion_cfg, direct=True), x, None, diffusion_cfg, direct=True,
                              desc="direct diffusion", device=device)
        return ema, _info("direct", history, diffusion_cfg, len(x), conditional=False), \
            {f"normalizer.{k}": v for k, v in normalizer.state().items()}

    model, info, extra = _cached("direct_diffusion", key, build, dim, "direct", rebuild, device)
    info["normalizer"] = weights.Normalizer.from_state(
        {k[len("normalizer."):]: v for k, v in extra.items() if k.startswith("normalizer.")})
    info["dataset"] = ds
    return model, info


def generate_direct(n: int, denoiser, info: Mapping[str, Any], steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None, seed: int | None = None,
                    clip_x0: float | None = None) -> torch.Tensor:
    """``n`` networks (n, D) from the direct baseline: DDIM on normalised vectors, then denormalised."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    x = diffusion.ddim_sample(denoiser, _schedule(info), (n, denoiser.dim), steps=steps, eta=eta,
                              generator=generator, clip_x0=clip_x0)
    return info["normalizer"].denormalize(x.cpu())


# --- Watching a network appear: slider frames of one sampling run ---
def slider_frames(trajectory, vae_model, spec: Mapping, evaluate, reference: torch.Tensor | None = None,
                  index: int = 0, dpi: int = 80):
    r"""``(frames, captions, accuracies)`` of one DDIM run: each step's latent decoded and measured by ``evaluate``;
    a frame shows its first-layer filters and its weight histogram over the ``reference`` network's."""
    import matplotlib.pyplot as plt

    vectors = vae.decode_to_vectors(vae_model, torch.stack([e["x_t"][index] for e in trajectory]))
    acc = np.asarray(torch.as_tensor(evaluate(vectors), dtype=torch.float32))
    ref = reference if reference is not None else vectors[-1]
    lo, hi = np.percentile(ref.numpy(), [0.5, 99.5])
    bins = np.linspace(lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo), 61)
    fig, (ax_f, ax_h) = plt.subplots(1, 2, figsize=(6.4, 2.6), dpi=dpi, gridspec_kw={"width_ratios": [1, 1.3]})
    frames, captions, n_steps = [], [], len(trajectory) - 1
    for k, (entry, v) in enumerate(zip(trajectory, vectors)):
        first = next(iter(weights.unflatten(v.reshape(1, -1), spec).values()))[0]
        # the first layer's filters side by side (input channel 0), or its first 8 rows for an MLP
        grid = torch.cat(list(first[:, 0]), dim=1) if first.ndim == 4 else first[:8]
        where = f"t = {entry['t']}" if entry["t"] >= 0 else "done"
        captions.append(f"step {k}/{n_steps}, {where}: decoded network {acc[k]:.1f} % test accuracy")
        ax_f.clear(), ax_h.clear()
        ax_f.imshow(grid.numpy(), cmap="RdBu_r", vmin=-float(grid.abs().max()), vmax=float(grid.abs().max()))
        ax_f.set_axis_off()
        ax_h.hist(ref.numpy().clip(bins[0], bins[-1]), bins=bins, color="0.7", label="a checkpoint")
        ax_h.hist(v.numpy().clip(bins[0], bins[-1]), bins=bins, histtype="step", color="C0", label="this network")
        ax_h.set_yscale("log")
        ax_h.legend(fontsize=7, loc="upper right")
        fig.suptitle(captions[-1], fontsize=9)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames, captions, acc


def wide_conditioning_configs(preset: str | None = None, dataset: str | None = None, **overrides):
    """``(cfg, zoo_cfg, vae_cfg, diffusion_cfg)`` of notebook 03's last section (the wide zoo; ``cfg["vae"]``
    and ``cfg["diffusion"]`` laid over the preset's sections)."""
    cfg = config.get_config("wide_conditioning", preset, dataset=dataset, **overrides)
    zoo_cfg = weights.zoo_config(cfg.preset, "wide", dataset=dataset, **dict(cfg["zoo"]))
    vae_cfg = config.get_config("vae", cfg.preset, dataset=dataset, **dict(cfg["vae"]))
    diffusion_cfg = config.get_config("weight_diffusion", cfg.preset, dataset=dataset, **dict(cfg["diffusion"]))
    return cfg, zoo_cfg, vae_cfg, diffusion_cfg
