r"""Notebook 04's generator: a class-conditional U-Net on standardised codes :math:`\tilde z = (z-\mu)/s`,
trained with :mod:`helpers.diffusion`, sampled with guidance and decoded, :math:`x = D(\mu + s\odot\tilde z_0)`;
the guidance weight is chosen by a selector CNN on held-out images, never by the judge.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import artifacts, diffusion, image_ae, image_eval, runtime
from .denoisers import SinusoidalTimeEmbedding


class ConvResBlock(nn.Module):
    """Residual conv block; the embedding (B, emb_dim) scales and shifts its channels (formula in ``forward``)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(math.gcd(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # h = conv(SiLU(GN(x)));  gamma, beta = Linear(SiLU(e))
        h = self.conv1(self.act(self.norm1(x)))
        gamma, beta = self.film(self.act(emb))[:, :, None, None].chunk(2, dim=1)
        # h <- GN(h) (1 + gamma) + beta;  out = skip(x) + conv(SiLU(h))
        h = self.norm2(h) * (1 + gamma) + beta
        return self.skip(x) + self.conv2(self.act(h))


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions, in a residual branch."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention needs channels divisible by heads; got {channels} and {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(math.gcd(8, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        # x + W_o softmax(Q K^T / sqrt(d)) V,  Q, K, V = W_{q,k,v} GN(x)
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                         v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class UNetDenoiser(nn.Module):
    r"""A small U-Net :math:`v_\theta(z_t, t, c)` (or :math:`\epsilon_\theta`) over latents (B, C, H, W).

    ``width`` channels times ``mults`` per level (stride 2 between levels), ``n_res`` blocks per level
    down (one more up), ``attention`` at the lowest level; class ``n_classes`` is the *null* class.
    Called as ``model(x_t, t, cond=None, drop_cond=None)``; ``cond=None`` or a dropped row: null class.
    """

    def __init__(self, in_channels: int = 4, width: int = 64, mults=(1, 2), n_res: int = 2,
                 attention: bool = True, time_dim: int = 64, n_classes: int = 2, heads: int = 4):
        super().__init__()
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        emb_dim = 4 * width
        self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, emb_dim),
                                        nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(n_classes + 1, emb_dim)  # index n_classes: the null class
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        widths = [width * int(m) for m in mults]
        self.down, skips, c = nn.ModuleList(), [width], width
        for level, w in enumerate(widths):
            last = level == len(widths) - 1
            for _ in range(n_res):
                self.down.append(ConvResBlock(c, w, emb_dim))
                c = w
                if attention and last:
                    self.down.append(SelfAttention2d(c, heads))
                skips.append(c)
            if not last:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ConvResBlock(c, c, emb_dim)]
                                 + ([SelfAttention2d(c, heads)] if attention else [])
                                 + [ConvResBlock(c, c, emb_dim)])
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(n_res + 1):
                self.up.append(ConvResBlock(c + skips.pop(), w, emb_dim))
                c = w
                if attention and level == len(widths) - 1:
                    self.up.append(SelfAttention2d(c, heads))
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = nn.GroupNorm(math.gcd(8, c), c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: torch.Tensor, cond, drop_cond, B: int, device) -> torch.Tensor:
        r"""The embedding :math:`e = e_t + e_c` (B, 4 width); the null class where ``cond`` is None or dropped."""
        null = torch.full((B,), self.n_classes, dtype=torch.long, device=device)
        idx = null if cond is None else torch.as_tensor(cond, device=device).long().expand(B)
        if drop_cond is not None:
            idx = torch.where(torch.as_tensor(drop_cond, device=device).bool().reshape(B), null, idx)
        # e = e_t + e_c
        return self.time_embed(t) + self.class_embed(idx)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, drop_cond=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected latents of shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        emb = self.embed(t.expand(B) if t.ndim == 0 else t, cond, drop_cond, B, x.device)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, ConvResBlock):
                h = layer(h, emb)
                hs.append(h)
            elif isinstance(layer, SelfAttention2d):
                h = hs[-1] = layer(h)
            else:  # stride-2 step down
                h = layer(h)
                hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ConvResBlock) else layer(h)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1), emb) if isinstance(layer, ConvResBlock) else layer(h)
        return self.out(nn.functional.silu(self.out_norm(h)))


DENOISER_KEYS = ("den_objective", "den_width", "den_mults", "den_res", "den_attention", "den_time_dim",
                 "den_steps", "den_batch_size", "den_lr", "den_ema", "den_p_uncond", "T", "schedule", "den_flip")
ARCH_KEYS = ("den_width", "den_mults", "den_res", "den_attention", "den_time_dim")


def make_denoiser(cfg, latent_shape: tuple[int, ...], n_classes: int = 2) -> UNetDenoiser:
    """The :class:`UNetDenoiser` of the ``den_*`` settings for codes of shape (C, H, W)."""
    if len(latent_shape) != 3:
        raise ValueError(f"the U-Net denoiser needs spatial codes (C, H, W); got shape {tuple(latent_shape)}")
    return UNetDenoiser(latent_shape[0], cfg["den_width"], cfg["den_mults"], cfg["den_res"], cfg["den_attention"],
                        cfg["den_time_dim"], n_classes)


def build_or_load_latent_denoiser(cfg, z_std: torch.Tensor, y: torch.Tensor, ae_key: str, device=None,
                                  rebuild: bool = False, z_std_mirrored: torch.Tensor | None = None):
    """The EMA U-Net trained on standardised codes ``z_std`` (N, C, H, W) with labels ``y`` (with ``den_flip``
    also on ``z_std_mirrored``, the mirrored images' codes), cached by the ``den_*`` settings and ``ae_key``."""
    device = runtime.device(device)
    if cfg.get("den_flip") and (z_std_mirrored is None or z_std_mirrored.shape != z_std.shape):
        found = None if z_std_mirrored is None else tuple(z_std_mirrored.shape)
        raise ValueError(f"den_flip needs z_std_mirrored of shape {tuple(z_std.shape)}; found {found}")
    key = {k: cfg.get(k) for k in DENOISER_KEYS}
    key.update(autoencoder=ae_key, seed=cfg["seed"])
    shape, n_classes = tuple(int(s) for s in z_std.shape[1:]), int(y.max()) + 1

    def build():
        torch.manual_seed(cfg["seed"])
        model = make_denoiser(cfg, shape, n_classes).to(device)
        data, cond = z_std, y
        if cfg.get("den_flip"):  # the codes of the mirrored images too: twice the training set
            data, cond = torch.cat([z_std, z_std_mirrored]), torch.cat([y, y])
        common = dict(ema_decay=cfg["den_ema"], p_uncond=cfg["den_p_uncond"], cond=cond.to(device),
                      generator=torch.Generator().manual_seed(cfg["seed"]),
                      warmup_steps=min(200, cfg["den_steps"] // 10), lr_schedule="cosine", progress=True)
        if cfg.get("den_objective", "ddpm") == "flow":
            return diffusion.train_flow(model, data.to(device), cfg["den_steps"], cfg["den_batch_size"],
                                        cfg["den_lr"], desc="latent flow", **common)
        sched = diffusion.NoiseSchedule.make(cfg["schedule"], cfg["T"])
        return diffusion.train_diffusion(model, data.to(device), sched, cfg["den_steps"], cfg["den_batch_size"],
                                         cfg["den_lr"], desc="latent denoiser", **common)

    def make(arch):
        if arch["shape"] != list(shape):
            raise artifacts.ArtifactError(f"latent denoiser: expected codes of shape {list(shape)}, found {arch['shape']}")
        return make_denoiser(arch, tuple(arch["shape"]), arch["n_classes"])

    arch = {"shape": list(shape), "n_classes": n_classes, **{k: cfg.get(k) for k in ARCH_KEYS}}
    return artifacts.cached_model("catdog_latent_denoiser", key, build, make, arch, device=device, rebuild=rebuild)


class ImageGenerator:
    """Autoencoder + standardisation + denoiser: labels in, images (n, 3, 32, 32) in [0, 1] out. ``objective``
    ``"flow"``: :func:`helpers.diffusion.flow_sample` (``flow_method``); ``"ddpm"``: DDIM (``sched``, ``eta``,
    ``clip``); ``guidance_interval`` ``(lo, hi)``: guide only there (:func:`helpers.diffusion.guidance_at`)."""

    def __init__(self, ae: image_ae.ImageAutoencoder, denoiser: nn.Module, sched: diffusion.NoiseSchedule | None,
                 scaler: diffusion.LatentStandardizer, eta: float = 0.0, clip: float | None = 5.0,
                 objective: str = "ddpm", flow_method: str = "euler", guidance_interval=None):
        if objective not in ("ddpm", "flow"):
            raise ValueError(f"unknown objective {objective!r}: expected 'ddpm' or 'flow'")
        self.ae, self.denoiser, self.sched, self.scaler = ae, denoiser, sched, scaler
        self.eta, self.clip, self.objective, self.flow_method = eta, clip, objective, flow_method
        self.guidance_interval = (None if guidance_interval is None
                                  else diffusion.check_guidance_interval(guidance_interval))
        self.shape = tuple(ae.latent_shape)

    @torch.no_grad()
    def sample_latents(self, labels, steps: int = 50, guidance: float = 3.0, seed: int = 0,
                       return_trajectory: bool = False, batch_size: int = 500):
        """Standardised codes (n, C, H, W) for ``labels`` (n,) from the noise of ``seed`` (the same at every
        w and step count); with ``return_trajectory`` also the sampler's trajectory (one batch only)."""
        labels = torch.as_tensor(labels).long()
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(labels), *self.shape), generator=gen)
        outs, traj = [], None
        for i in range(0, len(labels), batch_size):
            cond = None if guidance == 0 else labels[i:i + batch_size]
            kw = dict(steps=steps, cond=cond, guidance=float(guidance) if cond is not None else 1.0,
                      noise=noise[i:i + batch_size], generator=gen, return_trajectory=return_trajectory,
                      guidance_interval=self.guidance_interval)
            if self.objective == "flow":
                out = diffusion.flow_sample(self.denoiser, kw["noise"].shape, method=self.flow_method, **kw)
            else:
                out = diffusion.ddim_sample(self.denoiser, self.sched, kw["noise"].shape, eta=self.eta,
                                            clip_x0=self.clip, **kw)
            if return_trajectory:
                out, traj = out
            outs.append(out.cpu())
        z = torch.cat(outs)
        return (z, traj) if return_trajectory else z

    def decode(self, z_std: torch.Tensor) -> torch.Tensor:
        r"""Images in [0, 1] from standardised codes: :math:`D(\mu + s \odot \tilde z)`."""
        return image_ae.decode_all(self.ae, self.scaler.unstandardize(z_std.cpu()))

    def generate(self, labels, steps: int = 50, guidance: float = 3.0, seed: int = 0) -> torch.Tensor:
        """Decoded samples (n, 3, 32, 32) in [0, 1] (:meth:`sample_latents`, then :meth:`decode`)."""
        return self.decode(self.sample_latents(labels, steps, guidance, seed))


SELECTOR_KEYS = ("seed", "n_train", "val_size", "sel_channels", "sel_epochs", "clf_batch_size", "clf_lr", "clf_blur")


def build_or_load_selector(cfg, x_fit: torch.Tensor, y_fit: torch.Tensor, device=None,
                           rebuild: bool = False) -> image_eval.CatDogCNN:
    """The selector: a judge-like CNN trained on the training images minus the validation split, seed + 1."""
    return image_eval.cached_classifier(
        "catdog_selector", {k: cfg[k] for k in SELECTOR_KEYS}, x_fit, y_fit, cfg["sel_channels"],
        cfg["sel_epochs"], cfg["clf_batch_size"], cfg["clf_lr"], seed=cfg["seed"] + 1,
        blur=cfg["clf_blur"], device=device, rebuild=rebuild)


def choose_guidance(rows: dict[float, dict], target: float) -> float:
    """The w of a selector sweep ``{w: {"class_consistency", "feature_fd"}}``: among those whose consistency
    reaches ``target`` (%), the lowest validation FD; if none does, the most consistent; ties: smaller w."""
    if not rows:
        raise ValueError("choose_guidance needs at least one swept w; got none")
    ok = [w for w, r in rows.items() if r["class_consistency"] >= target]
    if ok:
        return float(min(ok, key=lambda w: (rows[w]["feature_fd"], w)))
    return float(max(rows, key=lambda w: (rows[w]["class_consistency"], -w)))
