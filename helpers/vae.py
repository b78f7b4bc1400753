r"""The parameter autoencoder / VAE: compress whole networks into short latent vectors.

Notebook 01 gives a dataset of trained classifiers, each flattened to one vector
:math:`w \in \mathbb{R}^D` (a few thousand to tens of thousands of numbers). A
diffusion model straight on :math:`w` would have to learn in that large space;
instead, as in p-diff ("Neural Network Diffusion"), we first learn an
autoencoder that maps every network to a short latent :math:`z \in \mathbb{R}^L`
and back, then (notebook 03) run diffusion on :math:`z`.

**Normalisation.** Weight tensors of different layers live on different scales,
so each parameter tensor :math:`k` is standardised with a mean and std taken
over all checkpoints (:class:`helpers.weights.Normalizer`):
:math:`x = (w - m_k) / s_k`. The statistics are stored with the model, so
:func:`decode_to_vectors` returns weights in raw units.

**Encoder and decoder.** Two MLPs with LayerNorm and SiLU,

.. math::  (\mu, \log\sigma^2) = E_\phi(x), \qquad \hat x = D_\theta(z).

**Training objective (ELBO with a KL weight).** With the reparameterisation
:math:`z = \mu + \sigma \odot \epsilon`, :math:`\epsilon \sim \mathcal N(0, I)`,

.. math::  \mathcal L = \frac1D \lVert x - D_\theta(z) \rVert^2
           + \beta \, \frac1L \sum_{j=1}^{L} \tfrac12 (\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1).

The first term is the reconstruction error (a Gaussian likelihood up to
constants), the second the KL divergence :math:`KL(q_\phi(z|x) \,\|\, \mathcal N(0, I))`,
both per coordinate. :math:`\beta = 0` gives a **plain autoencoder**: no KL term
and no posterior sampling, :math:`z = \mu`.

**Noise augmentation** (p-diff's decisive trick). In training mode only,

.. math::  \tilde x = x + \sigma_{in}\,\xi, \qquad \tilde z = z + \sigma_z\,\zeta,
           \qquad \xi, \zeta \sim \mathcal N(0, I),

with :math:`\sigma_{in} \approx 0.001` and :math:`\sigma_z \approx 0.1`. The
latent noise forces the decoder to map a whole neighbourhood of each latent to
a working network, which is what makes the *diffusion samples* (never exactly
on a training latent) decode to good networks; p-diff's ablation lost 6.6 points
of accuracy without it. In eval mode both noises are off and ``encode``/``decode``
are deterministic.

**Permutation augmentation** (G.pt). Permuting the hidden units of a network,
:math:`W_l \to P_l W_l P_{l-1}^\top`, :math:`b_l \to P_l b_l`, gives another vector
:math:`\pi(w)` that computes the same function (:func:`helpers.weights.permute`). With
``permute_augment`` :math:`= p > 0`, each training vector of a minibatch is replaced, with
probability :math:`p`, by :math:`\pi(x)` for fresh random permutations (:func:`permute_augment`),
so the autoencoder sees each network in many unit orders instead of only the aligned one.
The per-tensor normalisation commutes with :math:`\pi` (one mean and std per tensor), so
permuting a normalised vector is exact.

**Latent standardisation.** The diffusion model of notebook 03 sees
:math:`u = (z - \bar z) / s` (:class:`helpers.diffusion.LatentStandardizer`), roughly unit scale:
users of p-diff saw whole-network generation collapse to 10 % accuracy until
the latents were scaled to about unit range.

**Sampling the prior.** The first, weak generator: draw latents and decode
(:func:`sample_prior`). For a VAE (:math:`\beta > 0`) :math:`z \sim \mathcal N(0, I)`;
for a plain AE the prior is not defined by training, so we draw from a diagonal
Gaussian fitted to the training latents, :math:`z \sim \mathcal N(\bar z, \mathrm{diag}(s^2))`.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F

from . import artifacts, runtime, weights
from .diffusion import LatentStandardizer
from .plots import new_axes


KIND = "param_vae"
"""The artifact kind of a saved :class:`ParamVAE` (:func:`helpers.artifacts.save_model`)."""


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

def _randn_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise like ``x``, drawn by the CPU generator and moved to ``x``'s device,
    so training draws the same noise on every device."""
    return torch.randn(x.shape, dtype=x.dtype).to(x.device)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU for every hidden layer, a plain Linear at the end."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b), nn.SiLU()]
    return nn.Sequential(*layers)


class ParamVAE(nn.Module):
    r"""An autoencoder / VAE over normalised weight vectors :math:`x \in \mathbb{R}^D`.

    Args:
        dim: :math:`D`, the length of a flattened network.
        latent_dim: :math:`L`, the length of a latent.
        hidden: width of the hidden layers of encoder and decoder.
        n_layers: number of hidden layers in each of encoder and decoder.
        beta: :math:`\beta`, the KL weight (0 = plain autoencoder).
        sigma_in: :math:`\sigma_{in}`, input noise in training mode.
        sigma_z: :math:`\sigma_z`, latent noise in training mode.

    The model also carries (not as parameters) the weight ``normalizer``
    (:class:`helpers.weights.Normalizer`), the ``latent_standardizer`` and the
    architecture ``spec`` of the networks it encodes; :func:`save_vae` stores them.
    """

    def __init__(self, dim: int, latent_dim: int = 64, hidden: int = 512, n_layers: int = 2,
                 beta: float = 0.0, sigma_in: float = 1e-3, sigma_z: float = 0.1):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        self.arch = dict(dim=int(dim), latent_dim=int(latent_dim), hidden=int(hidden),
                         n_layers=int(n_layers), beta=float(beta), sigma_in=float(sigma_in),
                         sigma_z=float(sigma_z))
        self.dim, self.latent_dim = int(dim), int(latent_dim)
        self.beta, self.sigma_in, self.sigma_z = float(beta), float(sigma_in), float(sigma_z)
        # encoder outputs (mu, log sigma^2) side by side
        self.encoder = _mlp([dim] + [hidden] * n_layers + [2 * latent_dim])
        self.decoder = _mlp([latent_dim] + [hidden] * n_layers + [dim])
        self.normalizer = None           # helpers.weights.Normalizer, set by build_vae
        self.latent_standardizer = None  # LatentStandardizer, set by build_vae
        self.spec = None                 # architecture spec of the encoded networks

    @property
    def variational(self) -> bool:
        """True for a VAE (:math:`\\beta > 0`), False for a plain autoencoder."""
        return self.beta > 0

    def _check(self, x: torch.Tensor, length: int, what: str) -> None:
        if x.dim() != 2 or x.shape[1] != length:
            raise ValueError(f"{what}: expected a batch of shape (K, {length}), found {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Normalised vectors :math:`x` (K, D) -> :math:`(\mu, \log\sigma^2)`, each (K, L).

        In training mode the input noise :math:`\tilde x = x + \sigma_{in}\xi` is added first.
        """
        self._check(x, self.dim, "encode")
        if self.training and self.sigma_in > 0:
            # \tilde x = x + \sigma_{in} \xi
            x = x + self.sigma_in * _randn_like(x)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents :math:`z` (K, L) -> normalised vectors :math:`\\hat x` (K, D). Deterministic."""
        self._check(z, self.latent_dim, "decode")
        return self.decoder(z)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        r"""The latent fed to the decoder.

        Training mode: :math:`z = \mu + \sigma\epsilon` (VAE only) :math:`+ \sigma_z\zeta`.
        Eval mode: :math:`z = \mu`.
        """
        if not self.training:
            return mu
        z = mu
        if self.variational:
            # z = \mu + \exp(\tfrac12 \log\sigma^2) \epsilon
            z = z + torch.exp(0.5 * logvar) * _randn_like(mu)
        if self.sigma_z > 0:
            # \tilde z = z + \sigma_z \zeta
            z = z + self.sigma_z * _randn_like(z)
        return z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, mu, logvar)``; noisy in training mode, deterministic in eval mode."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""The training loss and its parts: ``{"loss", "recon", "kl"}`` (scalars).

        .. math:: \mathcal L = \tfrac1D\lVert x-\hat x\rVert^2 + \beta\,\tfrac1L\,KL

        For :math:`\beta = 0` the KL term is not computed and ``kl`` is exactly 0.
        """
        x_hat, mu, logvar = self(x)
        # \frac1D \lVert x - \hat x \rVert^2, averaged over the batch
        recon = F.mse_loss(x_hat, x)
        if self.variational:
            # KL = \frac12 \sum_j (\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1), per latent dim
            kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).mean()
            loss = recon + self.beta * kl
        else:
            kl = torch.zeros((), device=x.device)
            loss = recon
        return {"loss": loss, "recon": recon, "kl": kl}


def model_from_config(dim: int, cfg: Mapping[str, Any]) -> ParamVAE:
    """A fresh :class:`ParamVAE` for vectors of length ``dim`` with the sizes in ``cfg``."""
    return ParamVAE(dim, latent_dim=cfg["latent_dim"], hidden=cfg["hidden"],
                    n_layers=cfg["n_layers"], beta=cfg["beta"], sigma_in=cfg["sigma_in"],
                    sigma_z=cfg["sigma_z"])


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def permute_augment(x: torch.Tensor, spec: Mapping[str, Any], prob: float,
                    generator: torch.Generator) -> torch.Tensor:
    r"""G.pt's permutation augmentation of a minibatch of (normalised) weight vectors (B, D).

    Each row is replaced, with probability ``prob``, by :math:`\pi(x)`, a random hidden-unit
    permutation of itself (same function, :func:`helpers.weights.permute`); the other rows are
    returned as they are. Every random number comes from ``generator`` (one uniform per row,
    then one ``randperm`` per hidden layer for each chosen row), so training stays reproducible.
    ``prob`` 0 draws nothing and returns ``x`` itself.
    """
    if prob <= 0:
        return x
    chosen = torch.rand(x.shape[0], generator=generator) < prob
    if not bool(chosen.any()):
        return x
    sizes = [shape[0] for _, shape in weights.param_shapes(spec)[::2][:-1]]   # hidden units per layer
    x = x.clone()
    for i in chosen.nonzero().flatten().tolist():
        perms = [torch.randperm(n, generator=generator) for n in sizes]
        x[i] = x[i, weights.permutation_index(spec, perms).to(x.device)]
    return x


def train_vae(model: ParamVAE, vectors: torch.Tensor, cfg: Mapping[str, Any],
              generator: torch.Generator | None = None, device=None) -> dict[str, list[float]]:
    r"""Train ``model`` on *normalised* vectors :math:`x` (N, D), in memory, in batches.

    ``cfg`` keys: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``,
    ``lr_step`` (epochs between learning-rate drops) and ``lr_gamma`` (the factor):
    the step-decay schedule :math:`\eta_e = \eta_0\,\gamma^{\lfloor e / \text{lr\_step}\rfloor}`
    (``torch.optim.lr_scheduler.StepLR``). Optimiser: AdamW. ``permute_augment`` (optional,
    default 0): the probability that a training vector is replaced, in each minibatch, by a
    random hidden-unit permutation of itself (:func:`permute_augment`, drawn from the same
    seeded generator as the batch order; needs ``model.spec``).

    Returns the history, one entry per epoch: ``loss``, ``recon``, ``kl``
    (training-mode averages, with noise) and ``lr``; plus ``recon_eval``, the
    noiseless reconstruction MSE of the whole set, every ``eval_every`` epochs
    (key ``eval_epoch`` holds those epochs). The model and the vectors move to
    ``device`` (None: :func:`helpers.runtime.device`); the batch order and the
    training noise are drawn on the CPU, as on every device.
    """
    device = runtime.device(device)
    model.to(device)
    x = vectors.detach().to(device=device, dtype=torch.float32)
    model._check(x, model.dim, "train_vae")
    n = x.shape[0]
    batch_size = min(int(cfg["batch_size"]), n)
    gen = generator if generator is not None else torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    p_perm = float(cfg.get("permute_augment", 0.0))
    if not 0.0 <= p_perm <= 1.0:
        raise ValueError(f"permute_augment: expected a probability in [0, 1], found {p_perm}")
    if p_perm > 0 and model.spec is None:
        raise ValueError("permute_augment > 0 needs the networks' architecture: expected model.spec, found None")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(cfg["lr_step"])),
                                            gamma=float(cfg["lr_gamma"]))
    eval_every = max(1, int(cfg.get("eval_every", 10)))
    hist: dict[str, list[float]] = {k: [] for k in
                                    ("loss", "recon", "kl", "lr", "recon_eval", "eval_epoch")}
    bar = runtime.progress(range(int(cfg["epochs"])), desc="VAE epochs")
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            parts = model.loss(permute_augment(x[idx], model.spec, p_perm, gen))
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            for k in sums:
                sums[k] += parts[k].item() * len(idx)
        hist["lr"].append(opt.param_groups[0]["lr"])
        sched.step()
        for k in sums:
            hist[k].append(sums[k] / n)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == int(cfg["epochs"]):
            hist["recon_eval"].append(reconstruction_mse(model, x))
            hist["eval_epoch"].append(epoch + 1)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(recon=f"{hist['recon_eval'][-1]:.2e}")
    model.eval()
    return hist


@torch.no_grad()
def reconstruction_mse(model: ParamVAE, x: torch.Tensor, batch_size: int = 256) -> float:
    r"""Noiseless :math:`\frac1{ND}\sum\lVert x - D(\mu(x))\rVert^2` on normalised vectors."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        mu, _ = model.encode(xb)
        total += F.mse_loss(model.decode(mu), xb, reduction="sum").item()
    model.train(was_training)
    return total / x.numel()


# ---------------------------------------------------------------------------
# From weight vectors to latents and back
# ---------------------------------------------------------------------------

def _raw_vectors(data) -> torch.Tensor:
    """A tensor (N, D) from a tensor or a :class:`helpers.weights.WeightDataset`."""
    vectors = data.vectors if hasattr(data, "vectors") else data
    return torch.as_tensor(vectors).to(torch.float32)


def _need_normalizer(model: ParamVAE) -> None:
    if model.normalizer is None:
        raise RuntimeError("this ParamVAE has no weight normalizer attached; build it with "
                           "build_vae / build_or_load_vae, or set model.normalizer")


def normalize(model: ParamVAE, vectors: torch.Tensor) -> torch.Tensor:
    """Raw weight vectors -> normalised :math:`x` with the model's stored statistics."""
    _need_normalizer(model)
    return model.normalizer.normalize(vectors)


def denormalize(model: ParamVAE, x: torch.Tensor) -> torch.Tensor:
    """Normalised :math:`x` -> raw weight vectors with the model's stored statistics."""
    _need_normalizer(model)
    return model.normalizer.denormalize(x)


@torch.no_grad()
def encode_dataset(model: ParamVAE, ds, batch_size: int = 256) -> torch.Tensor:
    r"""Raw weight vectors (a tensor (N, D) or a WeightDataset) -> latent means :math:`\mu` (N, L).

    Deterministic (eval mode). These are *raw* latents; standardise them with
    ``model.latent_standardizer.standardize`` before a diffusion model sees them.
    Batches run on the model's device; the latents are returned on the CPU.
    """
    x = normalize(model, _raw_vectors(ds))
    model.eval()
    dev = runtime.device_of(model)
    return torch.cat([model.encode(x[s:s + batch_size].to(dev))[0].cpu()
                      for s in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def decode_latents(model: ParamVAE, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Raw latents :math:`z` (K, L) -> raw weight vectors (K, D) on the CPU: decode (on the
    model's device), then denormalise."""
    model.eval()
    dev = runtime.device_of(model)
    x_hat = torch.cat([model.decode(z[s:s + batch_size].to(dev)).cpu() for s in range(0, z.shape[0], batch_size)])
    return denormalize(model, x_hat)


@torch.no_grad()
def decode_to_vectors(model: ParamVAE, latents_std: torch.Tensor) -> torch.Tensor:
    r"""*Standardised* latents :math:`u` (K, L) -> raw weight vectors (K, D).

    :math:`z = \bar z + s\,u`, :math:`\hat x = D_\theta(z)`, :math:`\hat w = m + s_w \hat x`.
    This is how notebooks 03 and 05 turn sampled latents into networks.
    """
    if model.latent_standardizer is None:
        raise RuntimeError("this ParamVAE has no latent standardizer; build it with build_vae")
    z = model.latent_standardizer.unstandardize(latents_std.detach().cpu().to(torch.float32))
    return decode_latents(model, z)


@torch.no_grad()
def reconstruct(model: ParamVAE, ds) -> torch.Tensor:
    """Raw weight vectors -> their deterministic reconstructions (raw), :math:`D(\\mu(x))`."""
    return decode_latents(model, encode_dataset(model, ds))


def prior_kind(model: ParamVAE) -> str:
    """Which prior :func:`sample_prior` draws from, in words."""
    if model.variational:
        return "N(0, I): the VAE prior (beta > 0)"
    return "N(mean, diag(std^2)) fitted to the training latents (plain AE, beta = 0)"


@torch.no_grad()
def sample_prior(model: ParamVAE, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""The weak first generator: ``n`` latents from the prior, decoded to raw weight vectors (n, D).

    VAE (:math:`\beta > 0`): :math:`z \sim \mathcal N(0, I)`. Plain AE: :math:`u \sim \mathcal N(0, I)`
    in standardised units, i.e. :math:`z \sim \mathcal N(\bar z, \mathrm{diag}(s^2))`, a diagonal
    Gaussian fitted to the training latents. :func:`prior_kind` says which.
    """
    eps = torch.randn(n, model.latent_dim, generator=generator)
    if model.variational:
        return decode_latents(model, eps)
    return decode_to_vectors(model, eps)


# ---------------------------------------------------------------------------
# Saving and loading (safetensors + JSON metadata; never pickle)
# ---------------------------------------------------------------------------

def _split_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a ``state()`` dict into tensors and JSON-able values."""
    tensors, meta = {}, {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        else:
            meta[k] = v
    return tensors, meta


def save_vae(model: ParamVAE, path, history: Mapping[str, list[float]] | None = None,
             config: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None):
    """Write weights, normaliser and latent statistics, spec, config and history to one
    safetensors file (:func:`helpers.artifacts.save_model`, kind ``"param_vae"``)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"config": dict(config or {}), "spec": model.spec, "extra": dict(extra or {})}
    if model.normalizer is not None:
        t, m = _split_state(model.normalizer.state())
        tensors.update({f"normalizer.{k}": v for k, v in t.items()})
        meta["normalizer"] = m
    if model.latent_standardizer is not None:
        tensors.update({f"latent.{k}": v for k, v in model.latent_standardizer.state().items()})
    for k, v in (history or {}).items():
        tensors[f"history.{k}"] = torch.tensor(v, dtype=torch.float64)
    meta["history_keys"] = sorted(history or {})
    return artifacts.save_model(path, model, KIND, model.arch, tensors, meta)


def load_vae(path, dim: int | None = None, spec: Any = None, device=None) -> tuple[ParamVAE, dict]:
    """Load a file written by :func:`save_vae`: ``(model in eval mode on device, info)``.

    ``dim`` / ``spec``, when given, are what the caller expects; a file made for
    another vector length or architecture raises :class:`helpers.artifacts.ArtifactError`
    naming what was expected and what was found. ``info`` holds ``history``,
    ``config``, ``extra`` and ``path``.
    """
    def make(arch):
        if dim is not None and int(dim) != int(arch["dim"]):
            raise artifacts.ArtifactError(
                f"{path}: VAE for weight vectors of the wrong length: expected D={int(dim)}, "
                f"found D={arch['dim']} (a VAE trained on another architecture or zoo)")
        return ParamVAE(**arch)

    model, tensors, meta = artifacts.load_model(path, KIND, make, device=device,
                                                hint="Run notebook 02 to train the VAE again.")
    if spec is not None and meta.get("spec") is not None and _jsonable(spec) != _jsonable(meta["spec"]):
        raise artifacts.ArtifactError(
            f"{path}: VAE for another network architecture: expected spec {_jsonable(spec)}, "
            f"found {_jsonable(meta['spec'])}")
    model.spec = meta.get("spec")
    norm_t = {k[len("normalizer."):]: v for k, v in tensors.items() if k.startswith("normalizer.")}
    if norm_t or meta.get("normalizer"):
        model.normalizer = weights.Normalizer.from_state({**meta.get("normalizer", {}), **norm_t})
    if "latent.mean" in tensors:
        model.latent_standardizer = LatentStandardizer.from_state(
            {"mean": tensors["latent.mean"], "scale": tensors["latent.scale"]})
    history = {k: tensors[f"history.{k}"].tolist() for k in meta.get("history_keys", [])}
    return model, {"history": history, "config": meta.get("config", {}),
                   "extra": meta.get("extra", {}), "path": str(path)}


def _jsonable(obj: Any) -> Any:
    import json
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# ---------------------------------------------------------------------------
# Build or load, keyed by the zoo's and the VAE's configs
# ---------------------------------------------------------------------------

def build_vae(ds, vae_cfg: Mapping[str, Any], device=None) -> tuple[ParamVAE, dict]:
    """Fit the normaliser, train a VAE on a WeightDataset (on ``device``), fit the latent standardizer.

    Returns ``(model, info)`` with ``info["history"]`` and ``info["extra"]["train_seconds"]``.
    """
    torch.manual_seed(int(vae_cfg.get("seed", 0)))
    vectors = _raw_vectors(ds)
    normalizer = weights.Normalizer()
    normalizer.fit(vectors, ds.spec)
    x = normalizer.normalize(vectors)
    model = model_from_config(x.shape[1], vae_cfg)
    model.normalizer, model.spec = normalizer, ds.spec
    start = time.perf_counter()
    history = train_vae(model, x, vae_cfg, device=device)
    seconds = time.perf_counter() - start
    model.latent_standardizer = LatentStandardizer.fit(encode_dataset(model, vectors))
    return model, {"history": history, "config": dict(vae_cfg),
                   "extra": {"train_seconds": seconds, "n_train": int(x.shape[0])}}


# The VAE settings that change what is trained: its cache key (with the zoo's). n_eval,
# n_test and n_prior only choose what notebook 02 shows, so changing them reuses the VAE.
TRAIN_KEYS = ("seed", "latent_dim", "hidden", "n_layers", "beta", "sigma_in", "sigma_z", "epochs",
              "batch_size", "lr", "weight_decay", "lr_step", "lr_gamma", "eval_every")


def vae_key(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any]) -> dict:
    """The cache key of the VAE trained by ``vae_cfg`` on the zoo of ``zoo_cfg``: the zoo's key
    and the VAE's training settings (:data:`TRAIN_KEYS`, and ``permute_augment`` when it is
    not 0, so the keys of VAEs without augmentation are those they always had), never its
    display knobs."""
    key = {"zoo": weights.zoo_key(zoo_cfg), "vae": artifacts.training_key(vae_cfg, TRAIN_KEYS)}
    if float(vae_cfg.get("permute_augment", 0.0)) != 0.0:
        key["vae"]["permute_augment"] = float(vae_cfg["permute_augment"])
    return key


def build_or_load_vae(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                      rebuild: bool = False, ds=None, device=None) -> tuple[ParamVAE, dict]:
    """The VAE trained by ``vae_cfg`` on the zoo made by ``zoo_cfg``: loaded if cached, else trained.

    Keyed by the settings that change what is trained (:func:`vae_key`), so notebooks
    03 and 05 get exactly the VAE notebook 02 trained with the same settings, and a
    display knob (``n_eval``, ``n_prior``) does not retrain it. Returned in eval mode
    on ``device`` (None: :func:`helpers.runtime.device`). ``info``
    has ``history``, ``config``, ``extra`` (``train_seconds``), ``path``, and
    ``dataset`` (the WeightDataset it was trained on). Pass ``ds``, the result of
    ``weights.build_or_load_zoo(zoo_cfg)``, if you already have it, to skip loading it again.
    """
    if ds is None:
        ds = weights.build_or_load_zoo(zoo_cfg)
    key = vae_key(zoo_cfg, vae_cfg)
    dim = int(_raw_vectors(ds).shape[1])

    def save(obj, path):
        model, info = obj
        save_vae(model, path, history=info["history"], config=vae_cfg, extra=info["extra"])

    def load(path):
        return load_vae(path, dim=dim, spec=ds.spec, device=device)

    model, info = artifacts.cached("vae", key, build=lambda: build_vae(ds, vae_cfg, device=device),
                                   save=save, load=load, rebuild=rebuild)
    info = dict(info)
    info["path"] = str(artifacts.artifact_path("vae", key))
    info["dataset"] = ds
    return model, info


# ---------------------------------------------------------------------------
# Latent-space pictures
# ---------------------------------------------------------------------------

def plot_latents(points, color, ax=None, title: str | None = None, label: str = "",
                 categorical: bool = False):
    """Scatter of 2-D points coloured by ``color`` (run seed: categorical; accuracy: continuous)."""
    import numpy as np

    fig, ax = new_axes(ax)
    color = np.asarray(color)
    if categorical:
        for c in np.unique(color):
            m = color == c
            ax.scatter(points[m, 0], points[m, 1], s=12, label=str(c))
        if len(np.unique(color)) <= 12:
            ax.legend(title=label, fontsize=7, markerscale=1.2, loc="best")
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], c=color, s=12, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


def format_table(rows: list[dict], columns: list[str] | None = None, digits: int = 2) -> str:
    """A small fixed-width text table of dict rows (floats with ``digits`` decimals)."""
    columns = columns or list(rows[0])
    cells = [[f"{r[c]:.{digits}f}" if isinstance(r[c], float) else str(r[c]) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
