r"""Notebook 06's models, which the notebook writes from scratch and checks against: a tiny convolutional VAE
for 28x28 images and class-conditional generators (flow matching or DDPM) in its latent, cached by settings.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, diffusion, runtime
from .denoisers import MLPDenoiser


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
        # optional linear class head on \mu (sorts the latent by class)
        self.n_classes = int(n_classes)
        self.head = nn.Linear(self.latent_dim, self.n_classes) if self.n_classes else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of :math:`q(z\\mid x)` for images in [0, 1]."""
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (N, 1, 28, 28) of codes (N, latent_dim); images are their sigmoid."""
        return self.dec(self.dec_in(z).reshape(len(z), self.channels[1], 4, 4))


def vae_loss(model: DigitVAE, x: torch.Tensor, beta: float, generator: torch.Generator | None = None,
             y: torch.Tensor | None = None, w_cls: float = 0.0):
    r"""Negative ELBO per image (+ ``w_cls`` times the head's cross-entropy): ``(loss, reconstruction, kl)``."""
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
    return torch.cat([torch.sigmoid(model.decode_logits(z[i:i + batch_size].to(dev))).cpu()
                      for i in range(0, len(z), batch_size)])


VAE_KEYS = ("seed", "vae_latent", "vae_channels", "vae_epochs", "vae_batch_size", "vae_lr", "vae_beta",
            "vae_w_cls", "n_train", "val_size")


def _vae_config(cfg, dataset: str) -> dict:
    return {**{k: cfg[k] for k in VAE_KEYS}, "dataset": dataset}


def vae_key(cfg, dataset: str) -> str:
    """The config hash of the VAE made by ``cfg`` for ``dataset`` (generators are keyed by it)."""
    return artifacts.config_key(_vae_config(cfg, dataset))


def build_or_load_vae(cfg, x_train: torch.Tensor, y_train: torch.Tensor, dataset: str, device=None,
                      rebuild: bool = False):
    """The :class:`DigitVAE` of settings ``cfg`` (keys :data:`VAE_KEYS`) for ``dataset``, trained with AdamW and a
    one-cycle learning rate (with a class head when ``vae_w_cls`` > 0), cached: ``(model, {"loss", "seconds"})``."""
    n_classes = int(y_train.max()) + 1 if cfg["vae_w_cls"] else 0
    arch = {"latent_dim": cfg["vae_latent"], "channels": list(cfg["vae_channels"]), "n_classes": n_classes}
    batch_size, lr = cfg["vae_batch_size"], cfg["vae_lr"]

    def build():
        dev = runtime.device(device)
        gen = torch.Generator().manual_seed(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        model = DigitVAE(arch["latent_dim"], arch["channels"], n_classes).to(dev)
        x = _as_float(x_train).to(dev)
        y = y_train.to(dev) if n_classes else None
        steps_per_epoch = max(1, len(x) // batch_size)
        total = max(1, int(round(cfg["vae_epochs"] * steps_per_epoch)))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
        hist, start = {"loss": []}, time.perf_counter()
        model.train()
        while len(hist["loss"]) < total:
            perm = torch.randperm(len(x), generator=gen).to(dev)
            for k in range(min(steps_per_epoch, total - len(hist["loss"]))):
                idx = perm[k * batch_size:(k + 1) * batch_size]
                loss = vae_loss(model, x[idx], cfg["vae_beta"], gen, None if y is None else y[idx], cfg["vae_w_cls"])[0]
                runtime.check_finite(loss, model="digit VAE", step=len(hist["loss"]), blame=f"vae_lr={lr}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                hist["loss"].append(loss.item())
        hist["seconds"] = time.perf_counter() - start
        return model.eval(), hist

    return artifacts.cached_model(f"digit_vae_{dataset}", _vae_config(cfg, dataset), build,
                                  lambda a: DigitVAE(a["latent_dim"], a["channels"], a["n_classes"]), arch,
                                  kind="digit_vae", device=device, rebuild=rebuild, freeze=True)


# name -> (hidden, n_blocks, time_dim) of the residual MLP; 4,576 and 15,664 parameters for a 16-d latent
GENERATOR_SIZES = {"tiny": (24, 1, 16), "small": (48, 1, 32)}


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
                            vae_key: str, rebuild: bool = False, device=None):
    """A class-conditional generator (``kind`` "flow" or "ddpm") trained on standardised codes ``z_std`` with labels
    ``y`` of the VAE hashed ``vae_key``, cached: ``(ema_model, history)``."""
    if kind not in ("flow", "ddpm"):
        raise ValueError(f"unknown generator kind {kind!r}: expected 'flow' or 'ddpm'")
    # T and schedule are the DDPM's settings only
    key = {k: cfg[k] for k in GEN_KEYS if kind == "ddpm" or k not in ("T", "schedule")}
    key.update(kind=kind, size=size, vae=vae_key)
    steps = int(cfg["gen_steps"])
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
        return diffusion.train_diffusion(model, z, sched, steps, cfg["gen_batch_size"], cfg["gen_lr"], **common)

    arch = {"dim": dim, "size": size, "n_classes": n_classes}
    return artifacts.cached_model(f"digit_{kind}_{size}", key, build,
                                  lambda a: make_generator(a["dim"], a["size"], a["n_classes"]), arch,
                                  kind="digit_generator", device=device, rebuild=rebuild, freeze=True)


@torch.no_grad()
def sample_latents(model: nn.Module, kind: str, labels: torch.Tensor, dim: int, steps: int = 20,
                   guidance: float = 1.0, seed: int = 0, sched=None, method: str = "heun",
                   return_trajectory: bool = False, clip: float | None = 5.0):
    """Class-conditional samples (on the model's device): flow matching with :func:`helpers.diffusion.flow_sample`
    (``method`` Euler or Heun) or DDPM with deterministic DDIM on ``sched``; guidance ``w`` (0 = unconditional)."""
    labels = torch.as_tensor(labels).to(runtime.device_of(model))
    cond = None if guidance == 0 else labels
    w = float(guidance) if cond is not None else 1.0
    shape = (len(labels), dim)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if kind == "flow":
        return diffusion.flow_sample(model, shape, steps, method, cond=cond, guidance=w, noise=noise,
                                     return_trajectory=return_trajectory)
    if kind != "ddpm" or sched is None:
        raise ValueError(f"expected kind 'flow', or 'ddpm' with a noise schedule; got {kind!r} "
                         f"{'without' if sched is None else 'with'} a schedule")
    return diffusion.ddim_sample(model, sched, shape, steps=steps, cond=cond, guidance=w, noise=noise,
                                 return_trajectory=return_trajectory, clip_x0=clip)

