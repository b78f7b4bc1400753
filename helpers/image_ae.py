r"""Notebook 04's image autoencoder, :math:`z = E(x) \in \mathbb R^{C\times8\times8}`, :math:`\hat x = D(z)`:

.. math:: \mathcal L = \lVert\hat x - x\rVert^2 + \lambda_1\lVert\hat x - x\rVert_1
          + \lambda_{cls}\,\mathrm{CE}(h(p), y)
          + \lambda_c\,\frac{\tfrac12\,\mathrm{mean}_i\lVert p_i - c_{y_i}\rVert^2}{\mathrm{mean}_i\lVert p_i-\bar p\rVert^2},

where :math:`p = \mathrm{pool}(z)` is the pooled code, :math:`h` a linear head, :math:`c_y` learned class
centers (Wen et al. 2016); the decoder sees :math:`z + \sigma s\odot\varepsilon` (:func:`noisy_codes`).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, runtime


def to_model(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1]: :math:`x = 2u/255 - 1`."""
    return x_uint8.float().div(127.5).sub(1.0)


class CAL(nn.Module):
    r"""Channel attention layer (squeeze-and-excitation): :math:`x \odot \sigma(W_2\,\mathrm{ReLU}(W_1\,\mathrm{avgpool}(x)))`."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # s = sigmoid(W2 relu(W1 mean_{h,w} x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * s


class CAB(nn.Module):
    r"""Convolutional attention block: :math:`x + \mathrm{CAL}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(x)))))))`."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        groups = math.gcd(8, channels)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.cal = CAL(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + self.cal(h)


class SpatialEncoder(nn.Module):
    """x (N, 3, 32, 32) -> z (N, latent_channels, 8, 8): 3x3 stem, two stride-2 stages, CABs, a 1x1 conv."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), latent_channels: int = 4, n_cab: int = 2):
        super().__init__()
        c0, c1, c2 = [int(c) for c in channels]
        self.body = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1), CAB(c0), nn.Conv2d(c0, c1, 4, stride=2, padding=1),
                                  CAB(c1), nn.Conv2d(c1, c2, 4, stride=2, padding=1), *[CAB(c2) for _ in range(n_cab)])
        self.norm = nn.GroupNorm(math.gcd(8, c2), c2)
        self.out = nn.Conv2d(c2, latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.norm(self.body(x))))


class SpatialDecoder(nn.Module):
    """z (N, latent_channels, 8, 8) -> x_hat (N, 3, 32, 32): the encoder mirrored (nearest upsampling + conv)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), latent_channels: int = 4, n_cab: int = 2):
        super().__init__()
        c0, c1, c2 = [int(c) for c in channels]
        self.body = nn.Sequential(
            nn.Conv2d(latent_channels, c2, 3, padding=1), *[CAB(c2) for _ in range(n_cab)],
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c1, 3, padding=1), CAB(c1),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c1, c0, 3, padding=1), CAB(c0),
            nn.GroupNorm(math.gcd(8, c0), c0), nn.SiLU(), nn.Conv2d(c0, 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class CenterLoss(nn.Module):
    r"""Center loss :math:`\tfrac12\,\mathrm{mean}_i\lVert z_i - c_{y_i}\rVert^2` with learnable centers (n_classes, dim)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(n_classes, dim) * 0.1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # L_c = 1/2 mean_i sum_j (z_ij - c_{y_i j})^2
        return 0.5 * (z - self.centers[y]).pow(2).sum(1).mean()


class ImageAutoencoder(nn.Module):
    """Encoder, decoder, linear class head and center loss on the pooled code; code (latent_channels, 8, 8)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), latent_channels: int = 8,
                 n_classes: int = 2, n_cab: int = 1):
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.latent_channels, self.n_classes, self.n_cab = int(latent_channels), int(n_classes), int(n_cab)
        self.latent_shape = (self.latent_channels, 8, 8)
        self.encoder = SpatialEncoder(self.channels, self.latent_channels, self.n_cab)
        self.decoder = SpatialDecoder(self.channels, self.latent_channels, self.n_cab)
        self.head = nn.Linear(5 * self.latent_channels, self.n_classes)
        self.center = CenterLoss(self.n_classes, 5 * self.latent_channels)

    def pooled(self, z: torch.Tensor) -> torch.Tensor:
        """(N, 5C): the mean of each channel over the map and over each 4x4 quadrant."""
        return torch.cat([z.mean(dim=(2, 3)), F.avg_pool2d(z, 4).flatten(1)], 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def noisy_codes(z: torch.Tensor, latent_noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r""":math:`z + \sigma\,s\odot\varepsilon`: ``s`` the batch's std of each channel (not back-propagated),
    :math:`\sigma` = ``latent_noise``, :math:`\varepsilon` from the CPU ``generator``."""
    scale = z.detach().std(dim=(0, 2, 3), keepdim=True)
    return z + latent_noise * scale * torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)


def ae_loss(model: ImageAutoencoder, x: torch.Tensor, y: torch.Tensor, w_cls: float = 0.1,
            w_center: float = 0.05, latent_noise: float = 0.0, generator: torch.Generator | None = None,
            w_l1: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The loss of the module docstring for images ``x`` in [-1, 1] and labels ``y``; ``(loss, parts)``.
    Center term and noise are relative to the codes' spread: a code has no scale of its own."""
    z = model.encode(x)
    x_hat = model.decode(noisy_codes(z, latent_noise, generator) if latent_noise > 0 else z)
    rec = F.mse_loss(x_hat, x)
    loss, parts = rec, {"rec": rec.item()}
    if w_l1 > 0:
        l1 = F.l1_loss(x_hat, x)
        loss, parts["l1"] = loss + w_l1 * l1, l1.item()
    p = model.pooled(z)
    cls = F.cross_entropy(model.head(p), y)
    # L_c = (1/2 mean_i ||p_i - c_{y_i}||^2) / (mean_i ||p_i - pbar||^2)
    total_var = (p - p.mean(0, keepdim=True)).pow(2).sum(1).mean().clamp_min(1e-8)
    cen = model.center(p, y) / total_var
    parts.update(cls=cls.item(), center=cen.item())
    return loss + w_cls * cls + w_center * cen, parts


@torch.no_grad()
def encode_all(model: ImageAutoencoder, x_uint8: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Codes (N, C, 8, 8) of uint8 images, in batches, on the CPU."""
    model.eval()
    dev = runtime.device_of(model)
    return torch.cat([model.encode(to_model(x_uint8[i:i + batch_size]).to(dev)).cpu()
                      for i in range(0, len(x_uint8), batch_size)])


@torch.no_grad()
def decode_all(model: ImageAutoencoder, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] decoded from codes, in batches, on the CPU."""
    model.eval()
    dev = runtime.device_of(model)
    # [-1, 1] -> [0, 1]
    return torch.cat([model.decode(z[i:i + batch_size].to(dev)).add(1).mul(0.5).clamp(0, 1).cpu()
                      for i in range(0, len(z), batch_size)])


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_autoencoder(x_uint8: torch.Tensor, y: torch.Tensor, channels=(32, 64, 128), latent_channels: int = 8,
                      epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, w_cls: float = 0.1,
                      w_center: float = 0.05, latent_noise: float = 0.1, seed: int = 0, w_l1: float = 0.0,
                      n_cab: int = 1, device=None) -> tuple[ImageAutoencoder, dict]:
    """Adam with a one-cycle rate on random left-right flipped batches of :func:`ae_loss`. Returns the
    model (eval mode, on ``device``) and per-step ``loss`` and ``rec`` and the ``seconds``."""
    device = runtime.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ImageAutoencoder(channels, latent_channels, int(y.max()) + 1, n_cab).to(device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x_uint8)
    per_epoch = max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    hist: dict = {"loss": [], "rec": []}
    bar = runtime.progress(total=epochs * per_epoch, desc="autoencoder")
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for k in range(per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            xb = random_flip(to_model(x_uint8[idx]).to(device), gen).contiguous(memory_format=torch.channels_last)
            loss, parts = ae_loss(model, xb, y[idx].to(device), w_cls, w_center, latent_noise, gen, w_l1=w_l1)
            runtime.check_finite(loss, model="image autoencoder", step=len(hist["loss"]), blame=f"ae_lr={lr}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
            hist["rec"].append(parts["rec"])
            bar.update(1)
    bar.close()
    hist["seconds"] = time.perf_counter() - start
    model.eval()
    return model.to(memory_format=torch.contiguous_format), hist


KIND = "image_autoencoder"
AE_KEYS = ("seed", "n_train", "ae_channels", "latent_channels", "ae_n_cab", "ae_epochs", "ae_batch_size", "ae_lr",
           "ae_w_cls", "ae_w_center", "ae_latent_noise", "ae_w_l1")


def architecture(model: ImageAutoencoder) -> dict:
    """The arguments that rebuild ``model``: ``ImageAutoencoder(**architecture(model))``."""
    return {"channels": model.channels, "latent_channels": model.latent_channels, "n_classes": model.n_classes,
            "n_cab": model.n_cab}


def ae_config_key(cfg) -> dict:
    """The settings that make the autoencoder: its cache key."""
    return {k: cfg.get(k) for k in AE_KEYS}


def build_or_load_autoencoder(cfg, x_uint8: torch.Tensor, y: torch.Tensor, rebuild: bool = False, device=None,
                              kind: str = "catdog_autoencoder"):
    """:func:`train_autoencoder` with the ``ae_*`` settings of ``cfg``, cached by them; ``(model, history)``."""
    key, device = ae_config_key(cfg), runtime.device(device)
    arch = {"channels": list(key["ae_channels"]), "latent_channels": key["latent_channels"],
            "n_classes": int(y.max()) + 1, "n_cab": key["ae_n_cab"]}
    return artifacts.cached_model(kind, key, lambda: train_autoencoder(
        x_uint8, y, key["ae_channels"], key["latent_channels"], key["ae_epochs"], key["ae_batch_size"], key["ae_lr"],
        key["ae_w_cls"], key["ae_w_center"], key["ae_latent_noise"], key["seed"], key["ae_w_l1"] or 0.0,
        key["ae_n_cab"], device), lambda a: ImageAutoencoder(**a), arch, kind=KIND, device=device, rebuild=rebuild)
