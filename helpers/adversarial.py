r"""A sharper decoder (notebook 04): the decoder :math:`G_\theta` fine-tuned against a patch discriminator
:math:`D_\psi`, the encoder frozen; with :math:`\hat x = G_\theta(E(x) + \sigma s\odot\varepsilon)`:

- discriminator, hinge loss: :math:`L_D = \mathbb E\max(0, 1 - D_\psi(x)) + \mathbb E\max(0, 1 + D_\psi(\hat x))`;
- decoder: :math:`L_G = L_{rec} + \lambda L_{adv}`, :math:`L_{rec} = \lVert\hat x-x\rVert^2 + \lambda_1\lVert\hat x-x\rVert_1`,
  :math:`L_{adv} = -\mathbb E D_\psi(\hat x)`, with the adaptive weight (Esser et al. 2021)
  :math:`\lambda = w\lVert\nabla_{\theta_L}L_{rec}\rVert / (\lVert\nabla_{\theta_L}L_{adv}\rVert + 10^{-4})` on the
  decoder's last layer :math:`\theta_L`, and :math:`\lambda = 0` for the first ``warmup`` steps.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import artifacts, image_ae, runtime


class PatchDiscriminator(nn.Module):
    """Images (N, 3, 32, 32) in [-1, 1] -> logits (N, 1, 8, 8), one per overlapping patch; every
    convolution spectrally normalised; ``width`` channels, then 2 ``width``."""

    def __init__(self, width: int = 64, in_channels: int = 3):
        super().__init__()
        sn, w = nn.utils.spectral_norm, int(width)
        self.body = nn.Sequential(sn(nn.Conv2d(in_channels, w, 4, 2, 1)), nn.LeakyReLU(0.2),
                                  sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),
                                  sn(nn.Conv2d(2 * w, 2 * w, 3, 1, 1)), nn.LeakyReLU(0.2),
                                  sn(nn.Conv2d(2 * w, 1, 3, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # L_D = mean relu(1 - D(x)) + mean relu(1 + D(x_hat))
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    weight: float, max_value: float = 1e4) -> torch.Tensor:
    r""":math:`\lambda`, clamped to ``[0, max_value]`` and detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    # lambda = w ||grad L_rec|| / (||grad L_adv|| + 1e-4)
    return (weight * g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_value).detach()


def finetune_decoder(ae: image_ae.ImageAutoencoder, x_uint8: torch.Tensor, steps: int = 1000, batch_size: int = 64,
                     lr: float = 2e-4, weight: float = 0.5, warmup: int = 100, latent_noise: float = 0.1,
                     w_l1: float = 1.0, d_width: int = 64, seed: int = 0, device=None):
    """A copy of ``ae`` whose decoder is fine-tuned for ``steps`` Adam steps (betas 0.5, 0.9) on random
    flipped batches of ``x_uint8``; ``weight`` is :math:`w`. ``ae`` is unchanged. Returns ``(model,
    history)``: per-step ``rec``, ``lambda``, ``d_loss`` and ``seconds``."""
    if x_uint8.ndim != 4 or x_uint8.shape[1:] != (3, 32, 32):
        raise ValueError(f"expected images shaped (N, 3, 32, 32); got {tuple(x_uint8.shape)}")
    device = runtime.device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(ae).to(device).eval().requires_grad_(False)  # the encoder is frozen
    dec_params = list(model.decoder.requires_grad_(True).parameters())
    disc = PatchDiscriminator(d_width).to(device)
    opt_g = torch.optim.Adam(dec_params, lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    last = model.decoder.body[-1].weight
    hist: dict = {"rec": [], "lambda": [], "d_loss": []}
    bar = runtime.progress(total=steps, desc="sharper decoder")
    start = time.perf_counter()
    for k in range(steps):
        idx = torch.randint(len(x_uint8), (batch_size,), generator=gen)
        xb = image_ae.random_flip(image_ae.to_model(x_uint8[idx]), gen).to(device)
        with torch.no_grad():
            z = image_ae.noisy_codes(model.encode(xb), latent_noise, gen)
        x_hat = model.decode(z)
        rec = F.mse_loss(x_hat, xb) + w_l1 * F.l1_loss(x_hat, xb)
        lam, loss_g = torch.zeros(()), rec
        if k >= warmup:
            adv = -disc(x_hat).mean()
            lam = adaptive_weight(rec, adv, last, weight)
            loss_g = rec + lam * adv
        runtime.check_finite(loss_g, model="sharper decoder", step=k, blame=f"ae_adv_lr={lr}, ae_adv_weight={weight}")
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        loss_d = hinge_d_loss(disc(xb), disc(x_hat.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        for key, v in (("rec", rec), ("lambda", lam), ("d_loss", loss_d)):
            hist[key].append(v.item())
        bar.update(1)
    bar.close()
    hist["seconds"] = time.perf_counter() - start
    return model.requires_grad_(False), hist


ADV_KEYS = ("ae_adv_steps", "ae_adv_batch_size", "ae_adv_lr", "ae_adv_weight", "ae_adv_warmup", "ae_adv_width")


def build_or_load_sharp_autoencoder(cfg, ae: image_ae.ImageAutoencoder, x_uint8: torch.Tensor,
                                    rebuild: bool = False, device=None, kind: str = "catdog_autoencoder_sharp"):
    """``ae`` with its decoder fine-tuned by :func:`finetune_decoder`, cached by the autoencoder's and the
    ``ae_adv_*`` settings; ``(ae, None)`` when ``ae_adv_steps`` is 0, else ``(model, history)``."""
    if not cfg.get("ae_adv_steps"):
        return ae, None
    key = {**image_ae.ae_config_key(cfg), **{k: cfg[k] for k in ADV_KEYS}}
    device = runtime.device(device)

    return artifacts.cached_model(kind, key, lambda: finetune_decoder(
        ae, x_uint8, key["ae_adv_steps"], key["ae_adv_batch_size"], key["ae_adv_lr"], key["ae_adv_weight"],
        key["ae_adv_warmup"], key["ae_latent_noise"], key["ae_w_l1"] or 0.0, key["ae_adv_width"], key["seed"], device),
        lambda a: image_ae.ImageAutoencoder(**a), image_ae.architecture(ae), kind=image_ae.KIND, device=device,
        rebuild=rebuild)
