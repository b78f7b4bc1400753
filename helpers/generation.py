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

import time
from typing import Any, Mapping

import numpy as np
import torch

from . import artifacts, classifiers, diffusion, runtime, vae, weights
from . import config as _config
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
HELDOUT_KEYS = ("heldout_runs", "heldout_every", "heldout_draws", "heldout_keep_best")
"""The held-out monitor's settings: part of the cache key only when ``heldout_runs`` > 0."""
DIRECT_TRAIN_KEYS = ("seed", "schedule", "T", "time_dim", "dropout", "batch_size", "weight_decay",
                     "warmup_steps", "lr_schedule", "ema_decay", "direct_input_skip", "direct_hidden",
                     "direct_n_blocks", "direct_train_steps", "direct_lr")

__all__ = [
    "KINDS", "LATENT_TRAIN_KEYS", "HELDOUT_KEYS", "DIRECT_TRAIN_KEYS", "heldout_split", "best_step",
    "fixed_draw_loss", "weight_diffusion_key", "direct_diffusion_key",
    "make_denoiser", "save_denoiser", "load_denoiser", "prediction_of", "training_latents",
    "standardize_accuracy", "build_or_load_weight_diffusion", "build_or_load_direct_diffusion",
    "sample_latents", "generate_networks", "generate_direct", "decode_trajectory",
    "accuracy_targets_run", "NetworkFrameRenderer", "plot_achieved_vs_requested",
    "slider_frames", "checkpoint_accuracies", "loss_curve_figure",
    "plot_accuracy_hists", "plot_schedules",
    "CONDITIONS", "r2_identity", "wide_conditioning_configs", "build_or_load_conditioned_diffusion", "wide_targets",
    "wide_conditioning_run", "plot_wide_conditioning", "plot_wide_zoo_accuracies",
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
    (:func:`helpers.artifacts.save_model`; ``info["kind"]`` is ``"latent"`` or ``"direct"``).
    A :class:`helpers.diffusion.EpsFromX0` is stored as the x0-network it wraps."""
    if isinstance(model, diffusion.EpsFromX0):
        model = model.x0_model          # an x0-predictor is stored as itself (info["prediction"] = "x0")
    tensors = dict(extra_tensors or {})
    tensors["history.loss"] = torch.tensor(info["history"]["loss"], dtype=torch.float32)
    meta = {k: v for k, v in info.items() if k not in ("history", "kind")}
    return artifacts.save_model(path, model, KINDS[info["kind"]], model.config, tensors, meta)


def load_denoiser(path, dim: int | None = None, kind: str = "latent", device=None) -> tuple[MLPDenoiser, dict]:
    """Load a file written by :func:`save_denoiser`: ``(model in eval mode on device, info)``.

    A denoiser trained with ``prediction="x0"`` comes back wrapped in
    :class:`helpers.diffusion.EpsFromX0`, so every sampler sees a noise predictor.

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
    if diffusion.check_prediction(info.get("prediction", "eps")) == "x0":
        model = diffusion.EpsFromX0(model, _schedule(info))
    return model, info


def _schedule(info: Mapping[str, Any]) -> diffusion.NoiseSchedule:
    return diffusion.NoiseSchedule.make(info["schedule"], int(info["T"]))


def prediction_of(diffusion_cfg: Mapping[str, Any]) -> str:
    """What the latent denoiser of ``diffusion_cfg`` predicts: ``"eps"`` (the default, also when the
    key is absent) or ``"x0"``; any other value is a one-line ValueError."""
    return diffusion.check_prediction(diffusion_cfg.get("prediction", "eps"))


def _train(model, data, cond, diffusion_cfg, direct: bool, desc: str, device=None, callback=None):
    """Train ``model`` on ``data`` (and ``cond``) on ``device`` (None: :func:`helpers.runtime.device`).

    ``callback(step, loss, model, ema_model)`` is passed to :func:`helpers.diffusion.train_diffusion`
    (the held-out monitor of :func:`build_or_load_weight_diffusion` uses it).
    The latent denoiser learns what ``diffusion_cfg["prediction"]`` names (:func:`prediction_of`):
    the noise (:func:`helpers.diffusion.diffusion_loss`) or the clean latent
    (:func:`helpers.diffusion.x0_loss`; the EMA model is then returned wrapped in
    :class:`helpers.diffusion.EpsFromX0`). The direct baseline always predicts the noise.
    """
    device = runtime.device(device)
    sched = diffusion.NoiseSchedule.make(diffusion_cfg["schedule"], int(diffusion_cfg["T"]))
    gen = torch.Generator().manual_seed(int(diffusion_cfg["seed"]) + (1 if direct else 0))
    x0_pred = not direct and prediction_of(diffusion_cfg) == "x0"
    loss_fn = None
    if x0_pred:
        sched_dev = sched.to(device)
        loss_fn = lambda m, x0, c, p, g: diffusion.x0_loss(m, sched_dev, x0, c, p_uncond=p, generator=g)  # noqa: E731
    ema, history = diffusion.train_diffusion(
        model.to(device), data.to(device), sched,
        steps=int(diffusion_cfg["direct_train_steps"] if direct else diffusion_cfg["train_steps"]),
        batch_size=int(diffusion_cfg["batch_size"]),
        lr=float(diffusion_cfg["direct_lr"] if direct else diffusion_cfg["lr"]),
        ema_decay=float(diffusion_cfg["ema_decay"]), cond=cond,
        p_uncond=float(diffusion_cfg["p_uncond"]) if cond is not None else 0.0, generator=gen,
        weight_decay=float(diffusion_cfg["weight_decay"]), warmup_steps=int(diffusion_cfg["warmup_steps"]),
        lr_schedule=diffusion_cfg["lr_schedule"], desc=desc, loss_fn=loss_fn, callback=callback)
    return (diffusion.EpsFromX0(ema, sched) if x0_pred else ema), history


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


# ---------------------------------------------------------------------------
# Held-out networks: does the denoiser generalise or memorise?
# ---------------------------------------------------------------------------
#
# Hold out every checkpoint of a few networks (runs) of the zoo from the denoiser's
# training set and log its loss on their latents as it trains. A denoiser that learns
# the distribution of networks keeps that loss falling; one that memorises its
# training latents drives the training loss down while the held-out loss turns up.
# Early stopping keeps the EMA weights at the held-out minimum.

def heldout_split(run_ids, n_heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """Split the distinct run ids of ``run_ids`` into ``(training runs, held-out runs)``, both sorted.

    ``n_heldout`` runs are drawn by a permutation seeded with ``seed``: the same inputs
    always give the same split; 0 holds out nothing. At least one run stays for training.
    """
    runs = sorted({int(r) for r in run_ids})
    if isinstance(n_heldout, bool) or not isinstance(n_heldout, int) or not 0 <= n_heldout < len(runs):
        raise ValueError(f"heldout_runs: expected a whole number from 0 to {len(runs) - 1} "
                         f"(the zoo has {len(runs)} runs), found {n_heldout!r}")
    perm = torch.randperm(len(runs), generator=torch.Generator().manual_seed(int(seed))).tolist()
    held = sorted(runs[i] for i in perm[:n_heldout])
    return [r for r in runs if r not in held], held


def best_step(steps, losses) -> tuple[int, float]:
    """Early stopping's choice in a logged curve: ``(step, loss)`` with the lowest loss (the earliest on ties)."""
    steps, losses = list(steps), [float(v) for v in losses]
    if not steps or len(steps) != len(losses):
        raise ValueError(f"best_step: expected as many steps as losses (at least one), "
                         f"found {len(steps)} steps and {len(losses)} losses")
    i = min(range(len(losses)), key=lambda k: (losses[k], k))
    return int(steps[i]), losses[i]


@torch.no_grad()
def fixed_draw_loss(model, sched: diffusion.NoiseSchedule, x0: torch.Tensor, cond=None,
                    prediction: str = "eps", n_draws: int = 16, seed: int = 0) -> float:
    r"""The denoiser's training loss on the points ``x0`` (N, L) with ``n_draws`` fixed draws per point.

    Each point gets ``n_draws`` pairs :math:`(t, \epsilon)` drawn from ``seed`` (the same
    pairs at every call), :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon`,
    and the loss is the mean of :math:`\lVert x_0 - \hat x_0\rVert^2` (``prediction="x0"``)
    or :math:`\lVert \epsilon - \hat\epsilon\rVert^2` (``"eps"``) over them: the objective
    itself, without the sampling noise of a minibatch, so evaluations at different training
    steps differ only by the model. ``cond`` (N,) are the points' conditions (None: unconditional).
    """
    prediction = diffusion.check_prediction(prediction)
    gen = torch.Generator().manual_seed(int(seed))
    x = x0.detach().cpu().repeat(n_draws, 1)
    t = torch.randint(0, sched.T, (x.shape[0],), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    x_t = diffusion.q_sample(sched, x, t, noise)
    device = runtime.device_of(model)
    c = None if cond is None else torch.as_tensor(cond).detach().cpu().repeat(n_draws).to(device)
    out = model(x_t.to(device), t.to(device), cond=c).cpu()
    return torch.mean((out - (x if prediction == "x0" else noise)) ** 2).item()


def _heldout_monitor(u_train, c_train, u_held, c_held, diffusion_cfg, sched):
    """``(callback, curve, best)``: every ``heldout_every`` steps the callback logs
    :func:`fixed_draw_loss` of the EMA model on the held-out latents and on as many training
    latents (the first ones), and keeps a copy of the EMA weights at the held-out minimum."""
    every, steps = int(diffusion_cfg["heldout_every"]), int(diffusion_cfg["train_steps"])
    draws, seed, pred = int(diffusion_cfg["heldout_draws"]), int(diffusion_cfg["seed"]), prediction_of(diffusion_cfg)
    n = min(len(u_train), len(u_held))
    u_tr, c_tr = u_train[:n], None if c_train is None else c_train[:n]
    curve = {"step": [], "train": [], "heldout": []}
    best = {"loss": float("inf"), "step": None, "state": None}

    def callback(step, loss, model, ema):
        if (step + 1) % every and step + 1 != steps:
            return
        h = fixed_draw_loss(ema, sched, u_held, c_held, pred, draws, seed)
        curve["step"].append(step + 1)
        curve["train"].append(fixed_draw_loss(ema, sched, u_tr, c_tr, pred, draws, seed))
        curve["heldout"].append(h)
        if h < best["loss"]:
            best.update(loss=h, step=step + 1, state={k: v.detach().clone() for k, v in ema.state_dict().items()})

    return callback, curve, best


def weight_diffusion_key(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                         diffusion_cfg: Mapping[str, Any]) -> dict:
    """The cache key of the latent denoiser: the VAE's key and the training settings
    (:data:`LATENT_TRAIN_KEYS`, and ``prediction`` when it is not the default ``"eps"`` and
    :data:`HELDOUT_KEYS` when ``heldout_runs`` > 0, so the keys of the default denoisers are
    those they always had), never a sampling or display knob."""
    key = {"vae": vae.vae_key(zoo_cfg, vae_cfg),
           "weight_diffusion": artifacts.training_key(diffusion_cfg, LATENT_TRAIN_KEYS)}
    if prediction_of(diffusion_cfg) != "eps":
        key["weight_diffusion"]["prediction"] = prediction_of(diffusion_cfg)
    if int(diffusion_cfg.get("heldout_runs", 0)):
        key["weight_diffusion"].update({k: diffusion_cfg[k] for k in HELDOUT_KEYS})
    return key


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
    built from (with ``heldout_runs`` > 0 also ``heldout``: the held-out runs, the logged
    ``step``/``train``/``heldout`` losses, ``best_step`` and ``kept_step``, the step whose
    EMA weights are returned: the held-out minimum if ``heldout_keep_best``, else the last):
    ``vae`` (the ParamVAE), ``vae_info`` and ``dataset`` (the zoo). Keyed by
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
        n_held = int(diffusion_cfg.get("heldout_runs", 0))
        if n_held:
            # every checkpoint of n_held runs is kept out of the denoiser's training set
            run_of = [int(m["run"]) for m in ds.metrics]
            _, held_runs = heldout_split(run_of, n_held, int(diffusion_cfg["seed"]))
            held = torch.tensor([r in held_runs for r in run_of])
            u, u_held, acc, acc_held = u[~held], u[held], acc[~held], acc[held]
        # \bar a, s_a: the accuracy condition is standardised like the latents
        cond_mean, cond_std = float(acc.mean()), float(acc.std().clamp_min(1e-3))
        cond = (acc - cond_mean) / cond_std if diffusion_cfg["conditional"] else None
        model = make_denoiser(dim, diffusion_cfg)
        callback = None
        if n_held:
            sched = diffusion.NoiseSchedule.make(diffusion_cfg["schedule"], int(diffusion_cfg["T"]))
            c_held = (acc_held - cond_mean) / cond_std if cond is not None else None
            callback, curve, best = _heldout_monitor(u, cond, u_held, c_held, diffusion_cfg, sched)
        ema, history = _train(model, u, cond, diffusion_cfg, direct=False, desc="latent diffusion", device=device,
                              callback=callback)
        info = {"kind": "latent", "history": history, "train_seconds": history["seconds"],
                "schedule": diffusion_cfg["schedule"], "T": int(diffusion_cfg["T"]), "cond_mean": cond_mean,
                "cond_std": cond_std, "conditional": bool(diffusion_cfg["conditional"]),
                "prediction": prediction_of(diffusion_cfg), "n_train": int(u.shape[0]),
                "config": dict(diffusion_cfg)}
        if n_held:
            kept = curve["step"][-1]
            if diffusion_cfg["heldout_keep_best"]:
                inner = ema.x0_model if isinstance(ema, diffusion.EpsFromX0) else ema
                inner.load_state_dict(best["state"])
                kept = best["step"]
            info["heldout"] = {"runs": held_runs, "n_heldout": int(u_held.shape[0]), **curve,
                               "best_step": best["step"], "kept_step": kept}
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


# ---------------------------------------------------------------------------
# Accuracy conditioning over a wide range (notebook 03's last section)
# ---------------------------------------------------------------------------

CONDITIONS = ("val_acc", "decoded_val_acc", "test_acc")
"""What the accuracy-conditioned denoiser of the wide study can be conditioned on."""


def r2_identity(requested, achieved) -> float:
    r"""How well achieved follows requested, judged against the identity line (not a fitted one).

    .. math::  R^2_{id} = 1 - \frac{\sum_i (a_i - r_i)^2}{\sum_i (a_i - \bar a)^2}

    with :math:`a` the achieved and :math:`r` the requested accuracies. 1 means every
    network hits its request; an offset or a slope other than 1 lowers it (a fitted
    line's :math:`R^2` would forgive both); it is negative when predicting every
    network by the mean achieved accuracy beats predicting it by its request.
    """
    r = np.asarray(requested, dtype=np.float64).ravel()
    a = np.asarray(achieved, dtype=np.float64).ravel()
    if r.shape != a.shape or r.size < 2:
        raise ValueError(f"expected requested and achieved of equal length >= 2, found {r.size} and {a.size}")
    ss_tot = float(((a - a.mean()) ** 2).sum())
    if ss_tot == 0.0:
        raise ValueError("achieved accuracies are all equal: R^2 about the identity line is undefined")
    return 1.0 - float(((a - r) ** 2).sum()) / ss_tot


def wide_conditioning_configs(preset: str | None = None, dataset: str | None = None, **overrides):
    """``(cfg, zoo_cfg, vae_cfg, diffusion_cfg)`` of the wide-accuracy conditioning study.

    ``cfg``: the ``wide_conditioning`` section (keyword overrides must name its keys);
    ``zoo_cfg``: :func:`helpers.weights.zoo_config` ``(preset, "wide")``; ``vae_cfg`` and
    ``diffusion_cfg``: the ``vae`` and ``weight_diffusion`` sections of the preset with
    ``cfg["vae"]`` and ``cfg["diffusion"]`` laid over them (unknown keys are refused there).
    ``dataset`` (None: ``$LDT_DATASET``, else "mnist") lays that dataset's settings
    (``config.WEIGHT_DATASETS``) over every one of them.
    """
    cfg = _config.get_config("wide_conditioning", preset, dataset=dataset, **overrides)
    zoo_cfg = weights.zoo_config(cfg.preset, "wide", dataset=dataset, **dict(cfg["zoo"]))
    vae_cfg = _config.get_config("vae", cfg.preset, dataset=dataset, **dict(cfg["vae"]))
    diffusion_cfg = _config.get_config("weight_diffusion", cfg.preset, dataset=dataset, **dict(cfg["diffusion"]))
    return cfg, zoo_cfg, vae_cfg, diffusion_cfg


def build_or_load_conditioned_diffusion(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                                        diffusion_cfg: Mapping[str, Any], condition: str = "val_acc",
                                        rebuild: bool = False):
    """:func:`build_or_load_weight_diffusion` with another accuracy as the condition.

    ``condition``: ``"val_acc"``, the checkpoint's accuracy on the zoo's validation split
    (so that achieved *test* accuracy is an honest check); ``"decoded_val_acc"``, the
    validation accuracy of the checkpoint *as the VAE reconstructs it* (what the decoder
    really makes of that latent, so the VAE's reconstruction error is not asked of the
    denoiser); or ``"test_acc"``. Returns ``(ema_denoiser, info)`` like
    :func:`build_or_load_weight_diffusion`, with ``info["condition"]`` and
    ``info["condition_values"]`` (the condition of every checkpoint, %, a numpy array).
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}")
    if not diffusion_cfg["conditional"]:
        raise ValueError("expected a conditional weight_diffusion config (conditional=True), found False")
    vae_model, vae_info = vae.build_or_load_vae(zoo_cfg, vae_cfg)
    ds = vae_info["dataset"]
    key = {**weight_diffusion_key(zoo_cfg, vae_cfg, diffusion_cfg), "condition": condition}
    dim = int(vae_model.latent_dim)

    def build():
        torch.manual_seed(int(diffusion_cfg["seed"]))
        u = training_latents(vae_model, ds)
        if condition == "decoded_val_acc":
            _, (x_val, y_val), _ = weights._zoo_data(zoo_cfg)
            acc = classifiers.evaluate_vectors(vae.reconstruct(vae_model, ds), ds.spec, x_val, y_val)
        else:
            acc = ds.column(condition)
        acc = acc.to(torch.float32)
        cond_mean, cond_std = float(acc.mean()), float(acc.std().clamp_min(1e-3))
        model = make_denoiser(dim, diffusion_cfg)
        ema, history = _train(model, u, (acc - cond_mean) / cond_std, diffusion_cfg, direct=False,
                              desc="conditioned latent diffusion")
        info = {"kind": "latent", "history": history, "train_seconds": history["seconds"],
                "schedule": diffusion_cfg["schedule"], "T": int(diffusion_cfg["T"]), "cond_mean": cond_mean,
                "cond_std": cond_std, "conditional": True, "condition": condition,
                "prediction": prediction_of(diffusion_cfg), "n_train": int(u.shape[0]),
                "config": dict(diffusion_cfg)}
        return ema, info, {"condition_values": acc}

    def load(path):
        model, info = load_denoiser(path, dim=dim, kind="latent")
        return model, info, info.pop("tensors")

    model, info, extra = artifacts.cached("conditioned_diffusion", key, build=build,
                                          save=lambda obj, path: save_denoiser(obj[0], path, obj[1], obj[2]),
                                          load=load, rebuild=rebuild)
    info = dict(info)
    info.pop("tensors", None)
    info.update(path=str(artifacts.artifact_path("conditioned_diffusion", key)), vae=vae_model,
                vae_info=vae_info, dataset=ds, condition_values=extra["condition_values"].numpy())
    return model, info


def wide_targets(accuracies, n_targets: int, q_lo: float, q_hi: float) -> np.ndarray:
    """``n_targets`` requested accuracies evenly spaced between the ``q_lo`` and ``q_hi`` quantiles."""
    lo, hi = np.quantile(np.asarray(accuracies, dtype=np.float64), [q_lo, q_hi])
    return np.round(np.linspace(lo, hi, int(n_targets)), 2)


def wide_conditioning_run(preset: str | None = None, dataset: str | None = None, verbose: bool = True,
                          **overrides) -> dict[str, Any]:
    """The whole wide-accuracy conditioning study: zoo, VAE, conditioned diffusion, requests, measurement.

    1. the wide zoo (:func:`helpers.weights.zoo_config` ``(preset, "wide")``), its VAE and a latent
       denoiser conditioned on ``cfg.condition`` (a validation accuracy, see
       :func:`build_or_load_conditioned_diffusion`), each loaded or built;
    2. ``n_targets`` requested accuracies evenly spaced between the ``target_quantiles`` of the
       condition over the zoo, ``n_per_target`` networks each (DDIM, ``ddim_steps``);
    3. the guidance weight: each of ``guidance_sweep`` is scored by :func:`r2_identity` with the
       generated networks measured on the *validation* split (other sampling seeds); the best is kept;
    4. with that weight, fresh networks measured on the *test* set (``n_test`` images): the result.

    Returns a dict: ``requested``, ``achieved`` (per network, %), ``targets``, ``zoo_condition``
    (the condition of every checkpoint) and ``zoo_test_acc`` (their test accuracies), ``guidance``, ``sweep`` (w -> validation R^2),
    ``r2_identity``, ``span_pp`` (last minus first target), ``pearson``, ``mae``, ``seconds``,
    and the configs.
    """
    t0 = time.perf_counter()
    cfg, zoo_cfg, vae_cfg, diffusion_cfg = wide_conditioning_configs(preset, dataset, **overrides)
    denoiser, info = build_or_load_conditioned_diffusion(zoo_cfg, vae_cfg, diffusion_cfg, cfg.condition)
    ds, vae_model = info["dataset"], info["vae"]
    spec = ds.spec
    (_, _), (x_val, y_val), _ = weights._zoo_data(zoo_cfg)
    x_test, y_test = classifiers.load_split(zoo_cfg.get("dataset", "mnist"), "test", cfg.n_test)
    zoo_cond = info["condition_values"]
    targets = wide_targets(zoo_cond, cfg.n_targets, *cfg.target_quantiles)

    def run(w: float, seed: int, x, y) -> dict[str, np.ndarray]:
        return accuracy_targets_run(denoiser, vae_model, info, targets, cfg.n_per_target,
                                    lambda v: classifiers.evaluate_vectors(v, spec, x, y),
                                    steps=cfg.ddim_steps, eta=0.0, guidance=float(w), seed=seed,
                                    clip_x0=diffusion_cfg["clip_x0"])

    sweep = {}
    for i, w in enumerate(cfg.guidance_sweep):
        out = run(w, int(cfg.seed) + 100 + i, x_val, y_val)
        sweep[float(w)] = r2_identity(out["requested"], out["achieved"])
        if verbose:
            print(f"guidance w = {w:g}: R^2 about the identity on the validation split {sweep[float(w)]:.3f}")
    guidance = max(sweep, key=sweep.get) if sweep else float(cfg.guidance_sweep[0])
    out = run(guidance, int(cfg.seed) + 1, x_test, y_test)
    req, ach = out["requested"].astype(np.float64), out["achieved"].astype(np.float64)
    result = {"requested": req, "achieved": ach, "targets": targets, "zoo_condition": zoo_cond,
              "zoo_test_acc": ds.test_acc.numpy(), "condition": cfg.condition, "guidance": guidance,
              "sweep": sweep, "r2_identity": r2_identity(req, ach), "span_pp": float(targets[-1] - targets[0]),
              "pearson": float(np.corrcoef(req, ach)[0, 1]), "mae": float(np.abs(ach - req).mean()),
              "n_zoo": len(ds), "seconds": time.perf_counter() - t0, "config": cfg, "zoo_config": zoo_cfg,
              "vae_config": vae_cfg, "diffusion_config": diffusion_cfg, "denoiser_info": info}
    if verbose:
        print(f"{len(ds)} checkpoints, {cfg.condition} {zoo_cond.min():.1f}-{zoo_cond.max():.1f} %; "
              f"{len(targets)} requests {targets[0]:.1f}-{targets[-1]:.1f} % x {cfg.n_per_target} networks, "
              f"w = {guidance:g} (chosen on validation): R^2 about the identity {result['r2_identity']:.3f}, "
              f"span {result['span_pp']:.1f} pt, Pearson {result['pearson']:.3f}, "
              f"mean |achieved - requested| {result['mae']:.2f} pt ({result['seconds']:.0f} s)")
    return result


def plot_wide_conditioning(result: Mapping[str, Any], ax=None, title: str | None = None):
    """Requested against achieved test accuracy over the wide zoo: dots, medians, the identity line."""
    fig, ax = new_axes(ax, figsize=(5.0, 4.4))
    req, ach = np.asarray(result["requested"], float), np.asarray(result["achieved"], float)
    span = float(req.max() - req.min()) or 1.0
    jitter = (np.arange(len(req)) % 7 - 3) * 0.004 * span
    ax.scatter(req + jitter, ach, s=12, alpha=0.5, label="generated network")
    targets = np.unique(req)
    ax.plot(targets, [np.median(ach[req == t]) for t in targets], "o-", color="C3", label="median per request")
    lo = min(req.min(), ach.min()) - 2
    hi = max(req.max(), ach.max()) + 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="achieved = requested")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    cond = "test" if result.get("condition") == "test_acc" else "validation"
    ax.set_xlabel(f"requested accuracy (%, a {cond} accuracy)")
    ax.set_ylabel("achieved test accuracy (%)")
    ax.set_title(title or f"wide zoo: R² about identity {result['r2_identity']:.2f}, "
                          f"w = {result['guidance']:g}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_wide_zoo_accuracies(result: Mapping[str, Any], main_acc=None, ax=None, bins: int = 30):
    """Histogram of the wide zoo: the condition (decoded validation accuracy) and the checkpoints'
    test accuracy, with the range of the main zoo's accuracies (``main_acc``) shaded."""
    fig, ax = new_axes(ax, figsize=(6.0, 3.4))
    cond = np.asarray(result["zoo_condition"], float)
    test = np.asarray(result["zoo_test_acc"], float)
    edges = np.linspace(min(cond.min(), test.min()), max(cond.max(), test.max()), bins + 1)
    name = {"decoded_val_acc": "condition: decoded, validation", "val_acc": "condition: validation",
            "test_acc": "condition: test"}.get(result.get("condition"), "condition")
    ax.hist(cond, bins=edges, alpha=0.6, label=f"{name} (n={len(cond)})")
    ax.hist(test, bins=edges, histtype="step", lw=1.5, color="k", label="checkpoints, test")
    if main_acc is not None:
        main = np.asarray(main_acc, float)
        ax.axvspan(main.min(), main.max(), color="C3", alpha=0.3, label="main zoo (section 6)")
    ax.set_xlabel("accuracy (%)")
    ax.set_ylabel("checkpoints")
    ax.legend(fontsize=8, loc="upper left")
    return fig
