r"""The smallest latent generative model of 28x28 digits: a tiny VAE and tiny latent generators.

Two pieces, each a few ten thousand parameters:

1. :class:`DigitVAE`, a convolutional VAE. The encoder (three stride-2 3x3
   convolutions, 28 -> 14 -> 7 -> 4 px, then one linear layer) maps an image
   :math:`x\in[0,1]^{28\times28}` to the mean :math:`\mu(x)` and log-variance of a
   Gaussian over a ``latent_dim``-vector :math:`z`; the decoder mirrors it with
   transposed convolutions and a sigmoid. Training minimises the negative ELBO
   with a small KL weight :math:`\beta` (:func:`vae_loss`):

   .. math:: \mathcal L = \mathrm{BCE}\big(D(z), x\big) + \beta\,\mathrm{KL}\big(\mathcal N(\mu,\sigma^2)\,\Vert\,\mathcal N(0, I)\big),
             \qquad z = \mu + \sigma\odot\epsilon .

   The generators work on :math:`\mu(x)`, standardised per dimension
   (:class:`helpers.diffusion.LatentStandardizer`).
2. A class-conditional generator in that latent: the residual-MLP
   :class:`helpers.denoisers.MLPDenoiser` (time and class by FiLM, a learned null
   class for classifier-free guidance), trained either as a DDPM noise predictor
   (:func:`helpers.diffusion.train_diffusion`) or as a flow-matching velocity
   field (:func:`helpers.diffusion.train_flow`). :data:`GENERATOR_SIZES` names three
   widths (about 5K, 20K and 100K parameters for a 16-d latent).

Everything is cached with :func:`helpers.artifacts.cached`, keyed by the
training settings only (not by sampling or display knobs).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, diffusion, runtime
from .denoisers import MLPDenoiser


__all__ = ["DigitVAE", "vae_loss", "train_vae", "encode_all", "decode_all", "build_or_load_vae",
           "GENERATOR_SIZES", "make_generator", "build_or_load_generator", "sample_latents",
           "count_parameters", "vae_key", "split_train_val"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images (N, 1, 28, 28) -> float32 in [0, 1]."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28); got {tuple(x.shape)}")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class DigitVAE(nn.Module):
    """A tiny convolutional VAE for (N, 1, 28, 28) images; ``channels`` = (c1, c2) widths."""

    def __init__(self, latent_dim: int = 16, channels=(16, 32), n_classes: int = 0):
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.latent_dim, self.channels = int(latent_dim), [c1, c2]
        self.enc = nn.Sequential(
            nn.Conv2d(1, c1, 3, 2, 1), nn.SiLU(),        # 28 -> 14
            nn.Conv2d(c1, c2, 3, 2, 1), nn.SiLU(),       # 14 -> 7
            nn.Conv2d(c2, c2, 3, 2, 1), nn.SiLU(),       # 7 -> 4
            nn.Flatten(), nn.Linear(c2 * 16, 2 * self.latent_dim))
        self.dec_in = nn.Linear(self.latent_dim, c2 * 16)
        self.dec = nn.Sequential(
            nn.SiLU(), nn.ConvTranspose2d(c2, c2, 3, 2, 1),                     # 4 -> 7
            nn.SiLU(), nn.ConvTranspose2d(c2, c1, 3, 2, 1, output_padding=1),    # 7 -> 14
            nn.SiLU(), nn.ConvTranspose2d(c1, 1, 3, 2, 1, output_padding=1))     # 14 -> 28
        # optional linear class head on \mu (a latent sorted by class, as in notebook 04)
        self.n_classes = int(n_classes)
        self.head = nn.Linear(self.latent_dim, self.n_classes) if self.n_classes else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of :math:`q(z\\mid x)` for images in [0, 1]."""
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(self.dec_in(z).reshape(len(z), self.channels[1], 4, 4))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes (N, latent_dim)."""
        return torch.sigmoid(self.decode_logits(z))


def vae_loss(model: DigitVAE, x: torch.Tensor, beta: float, generator: torch.Generator | None = None,
             y: torch.Tensor | None = None, w_cls: float = 0.0):
    r"""Negative ELBO per image (summed over pixels), plus ``w_cls`` times the class head's
    cross-entropy on :math:`\mu` when labels ``y`` are given: ``(loss, reconstruction, kl)``."""
    mu, logvar = model.encode(x)
    eps = torch.randn(mu.shape, generator=generator).to(mu.device)
    # z = \mu + \sigma \epsilon  (reparameterisation)
    z = mu + (0.5 * logvar).exp() * eps
    # BCE(D(z), x) summed over pixels, averaged over the batch
    rec = F.binary_cross_entropy_with_logits(model.decode_logits(z), x, reduction="sum") / len(x)
    # KL(N(\mu, \sigma^2) || N(0, I)) = 1/2 \sum (\mu^2 + \sigma^2 - \log\sigma^2 - 1)
    kl = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum() / len(x)
    loss = rec + beta * kl
    if w_cls and model.head is not None and y is not None:
        # + w_cls CE(head(\mu), y)
        loss = loss + w_cls * F.cross_entropy(model.head(mu), y)
    return loss, rec, kl


def train_vae(x_train: torch.Tensor, latent_dim: int = 16, channels=(16, 32), epochs: float = 3,
              batch_size: int = 128, lr: float = 3e-3, beta: float = 0.5, seed: int = 0,
              device=None, y_train: torch.Tensor | None = None, w_cls: float = 0.0) -> tuple[DigitVAE, dict]:
    r"""Train :class:`DigitVAE` on images (N, 1, 28, 28); AdamW with one-cycle learning rate.

    With ``w_cls > 0`` and labels ``y_train`` the VAE also gets a linear class head on
    :math:`\mu`, trained with weight ``w_cls`` (the latent is then sorted by class).

    Returns the model (eval mode, on ``device``; None: :func:`helpers.runtime.device`) and
    ``{"loss", "rec", "kl", "seconds"}`` per step.
    """
    device = runtime.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_classes = int(y_train.max()) + 1 if (w_cls and y_train is not None) else 0
    model = DigitVAE(latent_dim, channels, n_classes).to(device)
    x = _as_float(x_train).to(device)
    yd = y_train.to(device) if n_classes else None
    n = len(x)
    steps_per_epoch = max(1, n // batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    hist = {"loss": [], "rec": [], "kl": []}
    start = time.perf_counter()
    model.train()
    bar = runtime.progress(total=total, desc="VAE")
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=gen).to(device)
        for k in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[k * batch_size:(k + 1) * batch_size]
            loss, rec, kl = vae_loss(model, x[idx], beta, gen, None if yd is None else yd[idx], w_cls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
            hist["rec"].append(rec.item())
            hist["kl"].append(kl.item())
            step += 1
            bar.update(1)
    bar.close()
    hist["seconds"] = time.perf_counter() - start
    return model.eval(), hist


@torch.no_grad()
def encode_all(model: DigitVAE, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The posterior means :math:`\\mu(x)` (N, latent_dim) of images (uint8 or [0, 1]), on the CPU."""
    dev = runtime.device_of(model)
    return torch.cat([model.encode(_as_float(x[i:i + batch_size]).to(dev))[0].cpu()
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def decode_all(model: DigitVAE, z: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Images in [0, 1] (N, 1, 28, 28), on the CPU, from codes (N, latent_dim)."""
    dev = runtime.device_of(model)
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"expected codes of shape (N, {model.latent_dim}); got {tuple(z.shape)}")
    return torch.cat([model.decode(z[i:i + batch_size].to(dev)).cpu() for i in range(0, len(z), batch_size)])


VAE_KEYS = ("seed", "vae_latent", "vae_channels", "vae_epochs", "vae_batch_size", "vae_lr", "vae_beta",
            "vae_w_cls", "n_train", "val_size")


def build_or_load_vae(cfg, x_train: torch.Tensor, y_train: torch.Tensor, dataset: str, device=None,
                      rebuild: bool = False):
    """The :class:`DigitVAE` for settings ``cfg`` (keys :data:`VAE_KEYS`) and ``dataset``, cached.

    Returns ``(model, history)`` with the model on ``device`` (None: :func:`helpers.runtime.device`);
    a loaded model's history holds the saved loss curve.
    """
    key = {k: cfg[k] for k in VAE_KEYS}
    key["dataset"] = dataset

    def build():
        return train_vae(x_train, cfg["vae_latent"], cfg["vae_channels"], cfg["vae_epochs"],
                         cfg["vae_batch_size"], cfg["vae_lr"], cfg["vae_beta"], cfg["seed"], device,
                         y_train=y_train, w_cls=cfg["vae_w_cls"])

    def save(obj, path):
        model, hist = obj
        tensors = {f"hist.{name}": torch.tensor(hist[name]) for name in ("loss", "rec", "kl")}
        arch = {"latent_dim": model.latent_dim, "channels": list(model.channels), "n_classes": model.n_classes}
        artifacts.save_model(path, model, "digit_vae", arch, tensors, {"config": key, "seconds": hist["seconds"]})

    def load(path):
        model, tensors, meta = artifacts.load_model(
            path, "digit_vae", lambda a: DigitVAE(a["latent_dim"], a["channels"], a["n_classes"]), device=device)
        hist = {n: tensors[f"hist.{n}"].tolist() for n in ("loss", "rec", "kl")}
        hist["seconds"] = meta.get("seconds", float("nan"))
        return model, hist

    return artifacts.cached(f"digit_vae_{dataset}", key, build, save, load, rebuild=rebuild)


# ---------------------------------------------------------------------------
# Latent generators: one residual MLP, two objectives
# ---------------------------------------------------------------------------

# name -> (hidden, n_blocks, time_dim); parameter counts for a 16-d latent, 10 classes
GENERATOR_SIZES = {
    "tiny": (24, 1, 16),
    "small": (48, 1, 32),
    "large": (96, 2, 64),
}


def make_generator(dim: int, size: str, n_classes: int = 10, seed: int = 0) -> nn.Module:
    """A class-conditional :class:`~helpers.denoisers.MLPDenoiser` of one of :data:`GENERATOR_SIZES`."""
    if size not in GENERATOR_SIZES:
        raise ValueError(f"unknown generator size {size!r}: expected one of {', '.join(GENERATOR_SIZES)}")
    hidden, n_blocks, time_dim = GENERATOR_SIZES[size]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MLPDenoiser(dim, hidden, n_blocks, time_dim, cond_kind="class", n_classes=n_classes)


GEN_KEYS = ("seed", "gen_steps", "gen_batch_size", "gen_lr", "gen_ema", "gen_p_uncond", "T", "schedule")


def build_or_load_generator(cfg, kind: str, size: str, z_std: torch.Tensor, y: torch.Tensor,
                            vae_key: str, steps: int | None = None, rebuild: bool = False, device=None):
    """Train (or load) a class-conditional latent generator; return ``(ema_model, history)``.

    ``kind`` is ``"flow"`` (flow matching, :func:`helpers.diffusion.train_flow`) or
    ``"ddpm"`` (ε-prediction, :func:`helpers.diffusion.train_diffusion` with the
    ``schedule``/``T`` of ``cfg``); ``size`` one of :data:`GENERATOR_SIZES`;
    ``z_std`` standardised codes (N, d) with labels ``y``; ``vae_key`` the config
    hash of the VAE that made the codes; ``steps`` overrides ``cfg["gen_steps"]``. Trained
    and returned on ``device`` (None: :func:`helpers.runtime.device`).
    """
    if kind not in ("flow", "ddpm"):
        raise ValueError(f"unknown generator kind {kind!r}: expected 'flow' or 'ddpm'")
    key = {k: cfg[k] for k in GEN_KEYS}
    steps = int(steps or cfg["gen_steps"])
    key.update(gen_steps=steps, kind=kind, size=size, vae=vae_key)
    if kind == "flow":
        key.pop("T"), key.pop("schedule")
    dim, n_classes = int(z_std.shape[1]), int(y.max()) + 1
    device = runtime.device(device)

    def build():
        model = make_generator(dim, size, n_classes, cfg["seed"]).to(device)
        z = z_std.to(device)
        common = dict(ema_decay=cfg["gen_ema"], cond=y.to(device), p_uncond=cfg["gen_p_uncond"],
                      generator=torch.Generator().manual_seed(cfg["seed"]),
                      warmup_steps=min(100, steps // 10), lr_schedule="cosine", desc=f"{kind} {size}")
        if kind == "flow":
            return diffusion.train_flow(model, z, steps, cfg["gen_batch_size"], cfg["gen_lr"], **common)
        sched = diffusion.NoiseSchedule.make(cfg["schedule"], cfg["T"])
        return diffusion.train_diffusion(model, z, sched, steps, cfg["gen_batch_size"], cfg["gen_lr"],
                                         **common)

    def save(obj, path):
        ema, hist = obj
        artifacts.save_model(path, ema, "digit_generator", {"dim": dim, "size": size, "n_classes": n_classes},
                             {"hist.loss": torch.tensor(hist["loss"])}, {"config": key, "seconds": hist["seconds"]})

    def load(path):
        model, tensors, meta = artifacts.load_model(
            path, "digit_generator", lambda a: make_generator(a["dim"], a["size"], a["n_classes"]), device=device)
        hist = {"loss": tensors["hist.loss"].tolist(), "seconds": meta.get("seconds", float("nan"))}
        for p in model.parameters():
            p.requires_grad_(False)
        return model, hist

    return artifacts.cached(f"digit_{kind}_{size}", key, build, save, load, rebuild=rebuild)


@torch.no_grad()
def sample_latents(model: nn.Module, kind: str, labels: torch.Tensor, dim: int, steps: int = 20,
                   guidance: float = 1.0, seed: int = 0, sched=None, method: str = "heun",
                   return_trajectory: bool = False, clip: float | None = 5.0):
    """Class-conditional samples (standardised latent units) from a flow or DDPM generator.

    ``kind="flow"``: :func:`helpers.diffusion.flow_sample` with ``method`` (``"euler"``
    or ``"heun"``; ``steps`` steps). ``kind="ddpm"``: deterministic DDIM with ``steps``
    network calls on ``sched``. ``guidance`` :math:`w` (0 = unconditional).
    The starting noise comes from a CPU generator seeded with ``seed``; sampling runs on the
    model's device, where the samples are returned.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).to(runtime.device_of(model))
    cond = None if guidance == 0 else labels
    w = float(guidance) if cond is not None else 1.0
    shape = (len(labels), dim)
    noise = torch.randn(shape, generator=gen)
    if kind == "flow":
        return diffusion.flow_sample(model, shape, steps, method, cond=cond, guidance=w, noise=noise,
                                     return_trajectory=return_trajectory)
    if kind == "ddpm":
        if sched is None:
            raise ValueError("kind='ddpm' needs the noise schedule `sched`")
        return diffusion.ddim_sample(model, sched, shape, steps=steps, cond=cond, guidance=w, noise=noise,
                                     return_trajectory=return_trajectory, clip_x0=clip)
    raise ValueError(f"unknown generator kind {kind!r}: expected 'flow' or 'ddpm'")


def vae_key(cfg, dataset: str) -> str:
    """The config hash of the VAE made by ``cfg`` for ``dataset`` (generators are keyed by it)."""
    key = {k: cfg[k] for k in VAE_KEYS}
    key["dataset"] = dataset
    return artifacts.config_key(key)


def split_train_val(x: torch.Tensor, y: torch.Tensor, val_size: int, n_train: int | None = None,
                    seed: int = 0):
    """A fixed random split of a training set: ``(x_train, y_train, x_val, y_val)``.

    The last ``val_size`` images of a seeded permutation are the validation split;
    ``n_train`` (None = all the rest) training images are taken from the others.
    """
    if not 0 < val_size < len(x):
        raise ValueError(f"val_size must be between 1 and {len(x) - 1}; got {val_size}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[-val_size:], perm[:-val_size]
    if n_train is not None:
        train = train[:n_train]
    return x[train], y[train], x[val], y[val]
