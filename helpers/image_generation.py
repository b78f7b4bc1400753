r"""The image generator of notebook 04: latent denoiser, sampling, decoding, metrics at a setting, frames.

The weight story keeps its pipeline in :mod:`helpers.generation`; this module is
the same for images. A trained autoencoder (:mod:`helpers.image_ae`) gives codes
:math:`z = E(x)`; they are standardised, :math:`\tilde z = (z-\mu)/s` (per channel
for a spatial code), and a class-conditional denoiser (the U-Net or the residual
MLP of :mod:`helpers.denoisers`) learns them with the shared diffusion code of
:mod:`helpers.diffusion`. Sampling runs DDIM with classifier-free guidance and
decodes with :math:`D`:

.. math:: x = D\big(\mu + s \odot \tilde z_0\big),\qquad
          \tilde z_0 = \mathrm{DDIM}_{w}\big(\tilde z_T \sim \mathcal N(0, I),\ c\big).

**Choosing the guidance weight without the judge.** The judge of
:mod:`helpers.image_eval` scores the final numbers, so it must not pick
:math:`w`. :class:`Evaluator` also holds a *selector*: a second classifier
trained on the training images minus a held-out validation split. For every
:math:`w` of the sweep it measures the selector's class consistency on the
samples and the Fréchet distance, in the selector's features, between the
samples and the validation images. :func:`choose_guidance` takes the most
realistic :math:`w` (lowest validation FD) among those the selector finds
class-consistent enough, and freezes it; only then are the judge's numbers read.

Everything runs on the device of the models; noise is drawn from seeded CPU
generators, so a run is reproducible on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import artifacts, denoisers, diffusion, image_ae, image_eval, runtime

__all__ = ["DENOISER_KEYS", "make_denoiser", "build_or_load_latent_denoiser", "mirrored_codes", "ImageGenerator",
           "validation_split", "build_or_load_selector", "Evaluator", "choose_guidance",
           "run_frames", "thin_trajectory", "denoising_path"]


# ---------------------------------------------------------------------------
# The latent denoiser (trained with the shared diffusion code, cached)
# ---------------------------------------------------------------------------

DENOISER_KEYS = ("den_objective", "den_kind", "den_width", "den_mults", "den_res", "den_attention", "den_hidden",
                 "den_blocks", "den_time_dim", "den_steps", "den_batch_size", "den_lr", "den_ema",
                 "den_p_uncond", "T", "schedule", "den_flip")


def make_denoiser(cfg, latent_shape: tuple[int, ...], n_classes: int = 2) -> torch.nn.Module:
    """The denoiser ``cfg["den_kind"]`` names: ``"unet"`` (:class:`~helpers.denoisers.UNetDenoiser`
    over (C, H, W) codes) or ``"mlp"`` (:class:`~helpers.denoisers.MLPDenoiser` over flat codes)."""
    kind = cfg.get("den_kind", "mlp")
    if kind == "unet":
        if len(latent_shape) != 3:
            raise ValueError(f"the U-Net denoiser needs spatial codes (C, H, W); got shape {latent_shape}")
        return denoisers.UNetDenoiser(latent_shape[0], cfg["den_width"], cfg["den_mults"], cfg["den_res"],
                                      cfg["den_attention"], cfg["den_time_dim"], n_classes)
    if kind == "mlp":
        return denoisers.MLPDenoiser(int(np.prod(latent_shape)), cfg["den_hidden"], cfg["den_blocks"],
                                     cfg["den_time_dim"], cond_kind="class", n_classes=n_classes)
    raise ValueError(f"unknown den_kind {kind!r}: expected 'unet' or 'mlp'")


def build_or_load_latent_denoiser(cfg, z_std: torch.Tensor, y: torch.Tensor, ae_key: str,
                                  device=None, rebuild: bool = False, z_std_mirrored: torch.Tensor | None = None):
    """The class-conditional denoiser over standardised codes ``z_std`` (N, ...) with labels ``y``.

    Trained with :func:`helpers.diffusion.train_diffusion` (``den_objective="ddpm"``:
    ε-prediction loss) or :func:`helpers.diffusion.train_flow` (``"flow"``: rectified
    flow, velocity target), EMA, labels dropped with probability ``den_p_uncond`` for
    classifier-free guidance, on ``device`` (None: :func:`helpers.runtime.device`). Keyed by the denoiser settings plus ``ae_key`` (the
    autoencoder's config hash: new codes, new denoiser). With ``den_flip`` the denoiser also
    learns ``z_std_mirrored``, the standardised codes of the same images mirrored left-right
    (:func:`mirrored_codes`; a mirrored code map is not the code of the mirrored image, so the
    images are mirrored, not the codes). Returns ``(ema_model, history)``
    with ``history["loss"]`` per step and ``history["seconds"]``.
    """
    device = runtime.device(device)
    if cfg.get("den_flip") and (z_std_mirrored is None or z_std_mirrored.shape != z_std.shape):
        found = None if z_std_mirrored is None else tuple(z_std_mirrored.shape)
        raise ValueError(f"den_flip needs z_std_mirrored of shape {tuple(z_std.shape)}; found {found}")
    key = {k: cfg.get(k) for k in DENOISER_KEYS}
    if not key["den_flip"]:
        del key["den_flip"]  # off: the key (and cached artifacts) of the version without the option
    key["autoencoder"] = ae_key
    key["seed"] = cfg["seed"]
    shape = tuple(int(s) for s in z_std.shape[1:])
    n_classes = int(y.max()) + 1

    def build():
        torch.manual_seed(cfg["seed"])
        model = make_denoiser(cfg, shape, n_classes).to(device)
        sched = diffusion.NoiseSchedule.make(cfg["schedule"], cfg["T"])
        gen = torch.Generator().manual_seed(cfg["seed"])
        common = dict(ema_decay=cfg["den_ema"], p_uncond=cfg["den_p_uncond"], generator=gen,
                      warmup_steps=min(200, cfg["den_steps"] // 10), lr_schedule="cosine", progress=True)
        data, cond = z_std, y
        if cfg.get("den_flip"):
            # the codes of the left-right mirrored images too: twice the training set
            data, cond = torch.cat([z_std, z_std_mirrored]), torch.cat([y, y])
        common["cond"] = cond.to(device)
        if cfg.get("den_objective", "ddpm") == "flow":
            return diffusion.train_flow(model, data.to(device), cfg["den_steps"], cfg["den_batch_size"],
                                        cfg["den_lr"], desc="latent flow", **common)
        return diffusion.train_diffusion(model, data.to(device), sched, cfg["den_steps"], cfg["den_batch_size"],
                                         cfg["den_lr"], desc="latent denoiser", **common)

    arch_keys = ("den_kind", "den_width", "den_mults", "den_res", "den_attention", "den_hidden", "den_blocks",
                 "den_time_dim")

    def make(arch):
        if arch["shape"] != list(shape):
            raise artifacts.ArtifactError(f"latent denoiser: expected codes of shape {list(shape)}, found {arch['shape']}")
        return make_denoiser(arch, tuple(arch["shape"]), arch["n_classes"])

    def save(obj, path):
        ema, hist = obj
        arch = {"shape": list(shape), "n_classes": n_classes, **{k: cfg.get(k) for k in arch_keys}}
        artifacts.save_model(path, ema, "catdog_latent_denoiser", arch, {"hist.loss": torch.tensor(hist["loss"])},
                             {"config": key, "seconds": hist["seconds"]})

    def load(path):
        model, tensors, meta = artifacts.load_model(path, "catdog_latent_denoiser", make, device=device)
        return model, {"loss": tensors["hist.loss"].tolist(), "seconds": meta.get("seconds")}

    return artifacts.cached("catdog_latent_denoiser", key, build, save, load, rebuild=rebuild)


def mirrored_codes(ae: image_ae.ImageAutoencoder, x_uint8: torch.Tensor,
                   scaler: diffusion.LatentStandardizer) -> torch.Tensor:
    """Standardised codes of the images mirrored left-right, :math:`(E(x_{:,:,::-1}) - \\mu)/s` (``den_flip``)."""
    return scaler.standardize(image_ae.encode_all(ae, x_uint8.flip(-1)))


# ---------------------------------------------------------------------------
# Sampling and decoding
# ---------------------------------------------------------------------------

class ImageGenerator:
    """Autoencoder + standardisation + denoiser + schedule: labels in, images out.

    ``objective`` is how the denoiser was trained: ``"ddpm"`` (noise prediction,
    sampled with DDIM; ``eta`` and ``clip`` are DDIM's :math:`\\eta` and the bound on
    :math:`\\hat z_0` in standardised units) or ``"flow"`` (velocity, sampled with
    :func:`helpers.diffusion.flow_sample`, ``flow_method`` Euler or Heun).
    ``guidance_interval`` ``(lo, hi)``: guidance only at noise levels inside it, the plain
    conditional model elsewhere (:func:`helpers.diffusion.guidance_at`); None = everywhere.
    Images are (n, 3, 32, 32) floats in [0, 1] on the CPU.
    """

    def __init__(self, ae: image_ae.ImageAutoencoder, denoiser: torch.nn.Module,
                 sched: diffusion.NoiseSchedule, scaler: diffusion.LatentStandardizer, eta: float = 0.0,
                 clip: float | None = 5.0, objective: str = "ddpm", flow_method: str = "euler",
                 guidance_interval=None):
        if objective not in ("ddpm", "flow"):
            raise ValueError(f"unknown objective {objective!r}: expected 'ddpm' or 'flow'")
        self.ae, self.denoiser, self.sched, self.scaler = ae, denoiser, sched, scaler
        self.eta, self.clip = eta, clip
        self.guidance_interval = (None if guidance_interval is None
                                  else diffusion.check_guidance_interval(guidance_interval))
        self.objective, self.flow_method = objective, flow_method
        self.shape = tuple(ae.latent_shape)

    @torch.no_grad()
    def sample_latents(self, labels, steps: int = 50, guidance: float = 3.0, seed: int = 0,
                       return_trajectory: bool = False, batch_size: int = 500):
        """Standardised codes :math:`\\tilde z_0` (n, ...) for the requested classes ``labels`` (n,).

        ``guidance`` is :math:`w` (0 = unconditional, 1 = conditional, >1 guided);
        the starting noise comes from ``torch.Generator().manual_seed(seed)`` (the
        same seed gives the same noise at every :math:`w` and step count). With
        ``return_trajectory`` also the DDIM trajectory (one batch only).
        """
        labels = torch.as_tensor(labels).long()
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(labels), *self.shape), generator=gen)
        outs, traj = [], None
        for i in range(0, len(labels), batch_size):
            lab = labels[i:i + batch_size]
            cond = None if guidance == 0 else lab
            if self.objective == "flow":
                out = diffusion.flow_sample(self.denoiser, noise[i:i + batch_size].shape, steps=steps,
                                            method=self.flow_method, cond=cond,
                                            guidance=float(guidance) if cond is not None else 1.0,
                                            noise=noise[i:i + batch_size], generator=gen,
                                            return_trajectory=return_trajectory,
                                            guidance_interval=self.guidance_interval)
            else:
                out = diffusion.ddim_sample(self.denoiser, self.sched, noise[i:i + batch_size].shape,
                                            steps=steps, eta=self.eta, cond=cond,
                                            guidance=float(guidance) if cond is not None else 1.0,
                                            noise=noise[i:i + batch_size], generator=gen,
                                            return_trajectory=return_trajectory, clip_x0=self.clip,
                                            guidance_interval=self.guidance_interval)
            if return_trajectory:
                out, traj = out
            outs.append(out.cpu())
        z = torch.cat(outs)
        return (z, traj) if return_trajectory else z

    def decode(self, z_std: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from standardised codes: :math:`D(\\mu + s \\odot \\tilde z)`."""
        return image_ae.decode_all(self.ae, self.scaler.unstandardize(z_std.cpu()))

    def generate(self, labels, steps: int = 50, guidance: float = 3.0, seed: int = 0,
                 trajectory: bool = False):
        """Decoded samples (n, 3, 32, 32) in [0, 1]; with ``trajectory`` also the DDIM trajectory."""
        out = self.sample_latents(labels, steps, guidance, seed, return_trajectory=trajectory)
        if trajectory:
            return self.decode(out[0]), out[1]
        return self.decode(out)


# ---------------------------------------------------------------------------
# Validation split and the selector (chooses w; never the judge)
# ---------------------------------------------------------------------------

def validation_split(n: int, n_val: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, val)`` of a random split of ``n`` training images, ``n_val`` held out."""
    if not 0 < n_val < n:
        raise ValueError(f"validation split needs 0 < n_val < n; got n_val={n_val}, n={n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


SELECTOR_KEYS = ("seed", "n_train", "val_size", "sel_channels", "sel_epochs", "clf_batch_size", "clf_lr",
                 "clf_blur")


def build_or_load_selector(cfg, x_fit: torch.Tensor, y_fit: torch.Tensor, device=None,
                           rebuild: bool = False) -> image_eval.CatDogCNN:
    """The selector: a :class:`~helpers.image_eval.CatDogCNN` trained on the training images
    *minus the validation split* (``x_fit``), with its own seed (seed + 1), cached by its settings."""
    return image_eval.cached_classifier(
        "catdog_selector", {k: cfg[k] for k in SELECTOR_KEYS}, x_fit, y_fit, cfg["sel_channels"],
        cfg["sel_epochs"], cfg["clf_batch_size"], cfg["clf_lr"], seed=cfg["seed"] + 1,
        blur=cfg["clf_blur"], device=device, rebuild=rebuild)


# ---------------------------------------------------------------------------
# Metrics at a setting (steps, w), cached so that the sweeps reuse samples
# ---------------------------------------------------------------------------

class Evaluator:
    """Generate the evaluation set once per (DDIM steps, w) and score it.

    - ``judge`` and ``real_features`` (the judge's features of the real test images)
      give the reported numbers: class consistency and feature FD;
    - ``selector`` and ``val_images`` (held-out training images), if given, give the
      numbers :func:`choose_guidance` uses: ``sel_consistency`` and ``sel_fd``.

    Every setting uses the same starting noise (``seed``), so the sweeps compare
    settings, not noise.
    """

    def __init__(self, generator: ImageGenerator, judge, real_features: torch.Tensor,
                 n_per_class: int, seed: int = 100, selector=None, val_images: torch.Tensor | None = None,
                 n_classes: int = 2):
        self.gen, self.judge, self.real_features = generator, judge, real_features
        self.labels = torch.arange(n_classes).repeat_interleave(n_per_class)
        self.seed = seed
        self.selector = selector
        self.val_features = None
        if selector is not None and val_images is not None:
            self.val_features = image_eval.predict(selector, val_images)[1]
        self.samples: dict = {}
        self.results: dict = {}

    def images(self, steps: int, w: float) -> torch.Tensor:
        """The evaluation images at ``steps`` DDIM steps and guidance ``w`` (generated once)."""
        if (steps, w) not in self.samples:
            self.samples[steps, w] = self.gen.generate(self.labels, steps=steps, guidance=w, seed=self.seed)
        return self.samples[steps, w]

    def selection(self, steps: int, w: float) -> dict:
        """Selector numbers only (the judge is not called): ``sel_consistency`` (%), ``sel_fd``."""
        key = ("sel", steps, w)
        if key not in self.results:
            if self.selector is None or self.val_features is None:
                raise ValueError("this Evaluator has no selector and validation images")
            probs, feats = image_eval.predict(self.selector, self.images(steps, w))
            self.results[key] = {
                "sel_consistency": 100.0 * (probs.argmax(1) == self.labels).float().mean().item(),
                "sel_fd": image_eval.frechet_distance(feats, self.val_features)}
        return self.results[key]

    def metrics_at(self, steps: int, w: float) -> dict:
        """The judge's class consistency (%, overall and per class) and feature FD at (steps, w)."""
        if (steps, w) not in self.results:
            self.results[steps, w] = image_eval.evaluate_generated(self.judge, self.images(steps, w),
                                                                   self.labels, self.real_features)
        return self.results[steps, w]


def choose_guidance(rows: dict[float, dict], target: float) -> float:
    """The guidance weight of a selector sweep ``{w: {"sel_consistency", "sel_fd"}}``.

    Among the :math:`w` whose selector class consistency reaches ``target`` (%),
    the one with the lowest validation FD (the most realistic); if none reaches
    it, the most class-consistent one. Ties go to the smaller :math:`w`.
    """
    if not rows:
        raise ValueError("choose_guidance needs at least one swept w; got none")
    ok = [w for w, r in rows.items() if r["sel_consistency"] >= target]
    if ok:
        return float(min(ok, key=lambda w: (rows[w]["sel_fd"], w)))
    return float(max(rows, key=lambda w: (rows[w]["sel_consistency"], -w)))


# ---------------------------------------------------------------------------
# Frames of a run, and the denoising path
# ---------------------------------------------------------------------------

def run_frames(gen: ImageGenerator, labels, steps: int, guidance: float, seed: int, paired: bool = False,
               nrow: int = 4, max_frames: int | None = None):
    """One sampling run for ``labels``, as frames (one per step) for a GIF or a slider.

    ``paired=False``: the decoded noisy code :math:`D(z_t)` of every sample, tiled
    ``nrow`` per row; ``paired=True``: two rows per frame, :math:`D(z_t)` above
    :math:`D(\\hat z_0)`. ``max_frames``: keep at most that many frames of the run, evenly
    spaced, always the first and the final sample (smaller GIFs for long runs); the
    captions keep the run's own step numbers. Returns ``(frames, captions)``.
    """
    _, traj = gen.sample_latents(labels, steps, guidance, seed, return_trajectory=True)
    traj = thin_trajectory(traj, max_frames)
    decode = lambda z: image_ae.decode_all(gen.ae, z)  # noqa: E731
    if paired:
        return image_eval.paired_frames(decode, traj, inverse=gen.scaler.unstandardize, nrow=nrow)
    return image_eval.trajectory_frames(decode, traj, "x_t", nrow=nrow, inverse=gen.scaler.unstandardize)


def thin_trajectory(traj: list[dict], max_frames: int | None) -> list[dict]:
    """At most ``max_frames`` entries of ``traj``, evenly spaced, the first and last always kept;
    each kept entry gains ``"step"``, its index in ``traj``. None keeps every entry."""
    if max_frames is None or len(traj) <= max_frames:
        return traj
    if max_frames < 2:
        raise ValueError(f"max_frames must be at least 2 (the first and the final frame); got {max_frames}")
    idx = sorted({round(k * (len(traj) - 1) / (max_frames - 1)) for k in range(max_frames)})
    return [{**traj[i], "step": i} for i in idx]


def denoising_path(gen: ImageGenerator, labels, steps: int, guidance: float, seed: int,
                   z_train_std: torch.Tensor, n_frames: int = 8, n_background: int = 2000):
    """What :func:`helpers.image_eval.denoising_path_figure` draws, from one DDIM run.

    The codes (flattened) are projected on the first two principal components of
    the standardised training codes. Returns a dict of the figure's arguments:
    ``step_images`` (the first two samples at ``n_frames`` steps), ``step_labels``,
    ``background`` (projected training codes), ``paths`` (one (steps+1, 2) array per sample).
    """
    from sklearn.decomposition import PCA

    flat = z_train_std.reshape(len(z_train_std), -1).numpy()
    pca = PCA(2).fit(flat)
    _, traj = gen.sample_latents(labels, steps, guidance, seed, return_trajectory=True)
    path = np.stack([pca.transform(s["x_t"].reshape(len(labels), -1).numpy()) for s in traj], 1)
    pick = np.unique(np.linspace(0, len(traj) - 1, n_frames).round().astype(int))
    step_images = [torch.stack([gen.decode(traj[i]["x_t"][r:r + 1])[0] for i in pick]) for r in (0, 1)]
    step_labels = ["noise" if i == 0 else ("sample" if traj[i]["t"] < 0 else f"t={traj[i]['t']:.3g}") for i in pick]
    bg = torch.randperm(len(flat), generator=torch.Generator().manual_seed(2))[:n_background]
    return {"step_images": step_images, "step_labels": step_labels, "background": pca.transform(flat[bg]),
            "background_idx": bg, "paths": list(path)}


def psnr_of(ae: image_ae.ImageAutoencoder, x_uint8: torch.Tensor) -> tuple[float, float]:
    """``(mse, psnr_db)`` of the autoencoder's reconstructions of ``x_uint8``."""
    mse = image_ae.reconstruction_mse(ae, x_uint8)
    return mse, image_ae.psnr(mse) if mse > 0 else math.inf


# ---------------------------------------------------------------------------
# The flat 128-d model of the first version, for the comparison table
# ---------------------------------------------------------------------------

def flat_config(cfg):
    """The ``catdog`` settings of the first version of notebook 04 (flat 128-d code, MLP denoiser).

    Same data, judge and sampler; the autoencoder and denoiser settings that
    version used: channels (16, 32, 64), latent 128, batch 32, MSE only;
    residual MLP 512 x 3, batch 256, labels dropped with probability 0.15.
    ``flat_ae_epochs``, ``flat_den_steps`` and ``flat_guidance`` come from ``cfg``. A plain dict
    (the flat code's ``latent_channels=None`` is not a value the presets hold).
    """
    out = dict(cfg)
    out.update({"latent_channels": None, "latent_dim": 128, "ae_epochs": cfg["flat_ae_epochs"],
                "ae_batch_size": cfg["flat_ae_batch_size"], "ae_w_l1": 0.0, "ae_w_grad": 0.0,
                "ae_n_cab": 2, "den_objective": "ddpm", "den_kind": "mlp", "den_hidden": 512, "den_blocks": 3,
                "den_steps": cfg["flat_den_steps"], "den_batch_size": 256, "den_lr": 1e-3,
                "den_p_uncond": 0.15, "den_flip": False})
    return out


def comparison_table(rows: dict[str, dict], columns: dict[str, str]) -> str:
    """A plain-text table: one row per model (``rows[name][key]``), one column per ``columns`` key.

    ``columns`` maps a key of the row dicts to its header; missing values print as "–".
    """
    names = list(rows)
    width = max([len("metric")] + [len(h) for h in columns.values()])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{n:>12}" for n in names)]
    for key, header in columns.items():
        cells = []
        for n in names:
            v = rows[n].get(key)
            cells.append(f"{'–':>12}" if v is None else f"{v:>12.4g}")
        lines.append(f"{header:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def flat_row(flat: dict, cfg, x_train, y_train, x_test, y_test, judge, real_features, fd_floor: float,
             nn_ref: float, device=None) -> dict:
    """The comparison-table row of the flat model: trains (or loads) its MLP denoiser, samples the
    evaluation set at ``flat_guidance`` and scores it with the same judge and metrics.

    ``flat`` holds ``cfg`` (:func:`flat_config`), the trained ``ae``, ``ae_seconds``, ``psnr``.
    """
    fcfg, fae = flat["cfg"], flat["ae"]
    z_tr, z_te = image_ae.encode_all(fae, x_train), image_ae.encode_all(fae, x_test)
    scaler = diffusion.LatentStandardizer.fit(z_tr)
    ae_key = artifacts.config_key(image_ae.ae_config_key(fcfg))
    den, hist = build_or_load_latent_denoiser(fcfg, scaler.standardize(z_tr), y_train, ae_key, device=device)
    gen = ImageGenerator(fae, den, diffusion.NoiseSchedule.make(fcfg["schedule"], fcfg["T"]), scaler,
                         eta=fcfg["eta"])
    ev = Evaluator(gen, judge, real_features, fcfg["n_eval_per_class"], seed=fcfg["seed"] + 100)
    res = ev.metrics_at(fcfg["ddim_steps"], fcfg["flat_guidance"])
    imgs = ev.images(fcfg["ddim_steps"], fcfg["flat_guidance"])
    nn_dist, _ = image_eval.nearest_neighbours(imgs, x_train)
    recon_fd = image_eval.frechet_distance(image_eval.predict(judge, image_ae.decode_all(fae, z_te))[1],
                                           real_features)
    return {"psnr": flat["psnr"],
            "probe": image_eval.linear_probe_accuracy(z_tr, y_train, z_te, y_test),
            "w": fcfg["flat_guidance"], "consistency": res["class_consistency"], "fd": res["feature_fd"],
            "fd_recon": recon_fd, "fd_floor": fd_floor, "nn": nn_dist.mean().item(), "nn_ref": nn_ref,
            "minutes": (flat["ae_seconds"] + (hist["seconds"] or 0)) / 60, "samples": imgs}
