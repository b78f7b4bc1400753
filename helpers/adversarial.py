r"""A sharper decoder: adversarial fine-tuning of an image autoencoder's decoder (notebook 04).

A decoder trained on squared and absolute error alone predicts the *average* of the images a code could
stand for, so whatever it is unsure of comes out blurred, and every generated image passes through it.
The autoencoders of latent diffusion (Esser et al. 2021; Rombach et al. 2022) add a small
**patch discriminator** :math:`D_\psi` that scores overlapping patches as real or decoded; the decoder
learns to fool it, which keeps its output on the manifold of sharp images. We need no downloaded
weights for this (unlike a perceptual loss).

Here it is a second stage: the trained autoencoder's **encoder is frozen**, so the codes, their
standardisation and the latent denoiser trained on them stay as they are; only the decoder
:math:`G_\theta` is fine-tuned. With codes :math:`z = E(x) + \sigma s\odot\varepsilon` (the latent
noise of training, :func:`helpers.image_ae.ae_loss`) and :math:`\hat x = G_\theta(z)`:

- discriminator, hinge loss:
  :math:`L_D = \mathbb E\,[\max(0, 1 - D_\psi(x))] + \mathbb E\,[\max(0, 1 + D_\psi(\hat x))]`;
- decoder: :math:`L_G = L_{rec} + \lambda\,L_{adv}`, with :math:`L_{rec} = \lVert\hat x - x\rVert_2^2 +
  \lambda_1\lVert\hat x - x\rVert_1` (the autoencoder's own) and :math:`L_{adv} = -\mathbb E\,[D_\psi(\hat x)]`;
- :math:`\lambda` is set at every step so that both terms pull the decoder's last layer
  :math:`\theta_L` about equally hard (the adaptive weight of Esser et al.):
  :math:`\lambda = w\,\lVert\nabla_{\theta_L} L_{rec}\rVert / (\lVert\nabla_{\theta_L} L_{adv}\rVert + 10^{-4})`;
  :math:`\lambda = 0` for the first ``warmup`` steps, while the discriminator learns.

Every convolution of :math:`D_\psi` is spectrally normalised, which keeps its gradients tame.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import artifacts, image_ae, runtime

__all__ = ["ADV_KEYS", "PatchDiscriminator", "hinge_d_loss", "adaptive_weight", "finetune_decoder",
           "build_or_load_sharp_autoencoder"]


class PatchDiscriminator(nn.Module):
    """Images (N, 3, 32, 32) in [-1, 1] -> logits (N, 1, 8, 8), one per overlapping patch.

    Two stride-2 4×4 convolutions (32 -> 16 -> 8) and two 3×3 ones, LeakyReLU(0.2) between,
    spectral normalisation on every convolution; ``width`` channels, then ``2 * width``.
    """

    def __init__(self, width: int = 64, in_channels: int = 3):
        super().__init__()
        sn = nn.utils.spectral_norm
        w = int(width)
        self.body = nn.Sequential(
            sn(nn.Conv2d(in_channels, w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 2 * w, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * w, 1, 3, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    r""":math:`L_D = \mathbb E[\max(0, 1 - D(x))] + \mathbb E[\max(0, 1 + D(\hat x))]`."""
    # L_D = mean relu(1 - D(x)) + mean relu(1 + D(x_hat))
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    weight: float, max_value: float = 1e4) -> torch.Tensor:
    r""":math:`\lambda = w\,\lVert\nabla_{\theta_L} L_{rec}\rVert / (\lVert\nabla_{\theta_L} L_{adv}\rVert + 10^{-4})`,
    clamped to ``[0, max_value]`` and detached (a number, not part of the graph)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    # lambda = w ||grad L_rec|| / (||grad L_adv|| + 1e-4)
    return (weight * g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_value).detach()


def _last_conv_weight(decoder: nn.Module) -> torch.Tensor:
    convs = [m for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the decoder has no convolution whose weight could set the adaptive weight")
    return convs[-1].weight


def finetune_decoder(ae: image_ae.ImageAutoencoder, x_uint8: torch.Tensor, steps: int = 1000,
                     batch_size: int = 64, lr: float = 2e-4, weight: float = 0.5, warmup: int = 100,
                     latent_noise: float = 0.1, w_l1: float = 1.0, d_width: int = 64, seed: int = 0,
                     flip: bool = True, device=None):
    """A copy of ``ae`` whose decoder is fine-tuned against a :class:`PatchDiscriminator` (module docstring).

    ``x_uint8`` the training images (N, 3, 32, 32); ``steps`` Adam steps (betas 0.5, 0.9, rate ``lr``,
    for decoder and discriminator alike) on random batches of ``batch_size``, left-right flipped at
    random if ``flip``; ``weight`` is :math:`w`, ``warmup`` the steps with :math:`\\lambda = 0`;
    ``latent_noise`` and ``w_l1`` as in :func:`helpers.image_ae.ae_loss`. ``ae`` is not changed.
    Returns ``(model, history)``: the model in eval mode on ``device``, its encoder identical to
    ``ae``'s; the history holds per-step ``rec``, ``lambda``, ``d_loss`` and ``seconds``.
    """
    if not ae.spatial:
        raise ValueError("adversarial fine-tuning expects a spatial autoencoder (latent_channels set); "
                         f"got a flat code of {ae.latent_dim} numbers")
    if x_uint8.ndim != 4 or x_uint8.shape[1:] != (3, 32, 32):
        raise ValueError(f"expected images shaped (N, 3, 32, 32); got {tuple(x_uint8.shape)}")
    device = runtime.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(ae).to(device)
    model.eval()  # no dropout or batch norm inside; eval keeps the frozen encoder exactly as it was
    for p in model.parameters():
        p.requires_grad_(False)
    dec_params = list(model.decoder.parameters())
    for p in dec_params:
        p.requires_grad_(True)
    disc = PatchDiscriminator(d_width).to(device)
    opt_g = torch.optim.Adam(dec_params, lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    last = _last_conv_weight(model.decoder)
    hist: dict = {"rec": [], "lambda": [], "d_loss": []}
    bar = runtime.progress(total=steps, desc="sharper decoder")
    start = time.perf_counter()
    for k in range(steps):
        idx = torch.randint(len(x_uint8), (batch_size,), generator=gen)
        xb = image_ae.to_model(x_uint8[idx])
        if flip:
            xb = image_ae.random_flip(xb, gen)
        xb = xb.to(device)
        with torch.no_grad():
            z = image_ae.noisy_codes(model.encode(xb), latent_noise, gen)  # as the decoder saw them in training
        x_hat = model.decode(z)
        # L_rec = ||x_hat - x||^2 + lambda_1 ||x_hat - x||_1
        rec = F.mse_loss(x_hat, xb) + w_l1 * F.l1_loss(x_hat, xb)
        if k >= warmup:
            adv = -disc(x_hat).mean()
            lam = adaptive_weight(rec, adv, last, weight)
            loss_g = rec + lam * adv
        else:
            lam = torch.zeros(())
            loss_g = rec
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        loss_d = hinge_d_loss(disc(xb), disc(x_hat.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        hist["rec"].append(rec.item())
        hist["lambda"].append(lam.item())
        hist["d_loss"].append(loss_d.item())
        bar.update(1)
    bar.close()
    hist["seconds"] = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model, hist


ADV_KEYS = ("ae_adv_steps", "ae_adv_batch_size", "ae_adv_lr", "ae_adv_weight", "ae_adv_warmup", "ae_adv_width")
"""The ``catdog`` settings of the adversarial stage (its cache key, beside the autoencoder's own)."""


def build_or_load_sharp_autoencoder(cfg, ae: image_ae.ImageAutoencoder, x_uint8: torch.Tensor,
                                    rebuild: bool = False, device=None, kind: str = "catdog_autoencoder_sharp"):
    """``ae`` with its decoder fine-tuned by :func:`finetune_decoder` on ``x_uint8``, cached.

    Keyed by the autoencoder's settings (:func:`helpers.image_ae.ae_config_key`) and the
    ``ae_adv_*`` ones, so it is rebuilt whenever ``ae`` would be. With ``cfg.ae_adv_steps == 0``
    it returns ``(ae, None)``: no adversarial stage. Otherwise ``(model, history)``; a loaded
    model's history holds the loss curves and the seconds saved with it.
    """
    if not cfg.get("ae_adv_steps"):
        return ae, None
    key = {**image_ae.ae_config_key(cfg), **{k: cfg[k] for k in ADV_KEYS}}
    device = runtime.device(device)

    def build():
        return finetune_decoder(ae, x_uint8, steps=key["ae_adv_steps"], batch_size=key["ae_adv_batch_size"],
                                lr=key["ae_adv_lr"], weight=key["ae_adv_weight"], warmup=key["ae_adv_warmup"],
                                latent_noise=key["ae_latent_noise"], w_l1=key["ae_w_l1"] or 0.0,
                                d_width=key["ae_adv_width"], seed=key["seed"], device=device)

    def save(obj, path):
        model, hist = obj
        tensors = {f"hist.{k}": torch.tensor(hist[k]) for k in ("rec", "lambda", "d_loss")}
        artifacts.save_model(path, model, image_ae.KIND, image_ae.architecture(model), tensors,
                             {"config": key, "seconds": hist.get("seconds")})

    def load(path):
        model, tensors, meta = artifacts.load_model(path, image_ae.KIND, image_ae.from_architecture, device=device)
        hist = {k: tensors[f"hist.{k}"].tolist() for k in ("rec", "lambda", "d_loss")}
        hist["seconds"] = meta.get("seconds")
        return model, hist

    return artifacts.cached(kind, key, build, save, load, rebuild=rebuild)
