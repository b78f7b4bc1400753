"""The parameter autoencoder / VAE of p-diff (https://arxiv.org/abs/2402.13144): whole networks as
short latents. Notebook 02 writes it from scratch and checks it against this module."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, runtime, weights
from .diffusion import LatentStandardizer

KIND = "param_vae"   # the artifact kind of a saved ParamVAE


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU for every hidden layer, a plain Linear at the end."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b), nn.SiLU()]
    return nn.Sequential(*layers)


class ParamVAE(nn.Module):
    """Autoencoder / VAE over normalised weight vectors (K, D); also carries (not as parameters) the
    weight ``normalizer``, the ``latent_standardizer`` and the ``spec`` of the encoded networks."""

    def __init__(self, dim: int, latent_dim: int = 64, hidden: int = 512, n_layers: int = 2,
                 beta: float = 0.0, sigma_in: float = 1e-3, sigma_z: float = 0.1):
        super().__init__()
        self.arch = dict(dim=int(dim), latent_dim=int(latent_dim), hidden=int(hidden), n_layers=int(n_layers),
                         beta=float(beta), sigma_in=float(sigma_in), sigma_z=float(sigma_z))
        self.dim, self.latent_dim = int(dim), int(latent_dim)
        self.beta, self.sigma_in, self.sigma_z = float(beta), float(sigma_in), float(sigma_z)
        self.encoder = _mlp([dim] + [hidden] * n_layers + [2 * latent_dim])   # outputs (mu, log sigma^2)
        self.decoder = _mlp([latent_dim] + [hidden] * n_layers + [dim])
        self.normalizer = self.latent_standardizer = self.spec = None

    def _check(self, x: torch.Tensor, length: int, what: str) -> None:
        if x.dim() != 2 or x.shape[1] != length:
            raise ValueError(f"{what}: expected a batch of shape (K, {length}), found {tuple(x.shape)}")

    @staticmethod
    def _noise(noise: Mapping | None, name: str, like: torch.Tensor) -> torch.Tensor:
        """``noise[name]`` if given, else N(0, I) drawn on the CPU (the same on every device)."""
        return noise[name].to(like) if noise and name in noise else torch.randn(like.shape).to(like)

    def encode(self, x: torch.Tensor, noise: Mapping | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""x (K, D) -> :math:`(\mu, \log\sigma^2)`, each (K, L); in training mode on :math:`x + \sigma_{in}\xi`."""
        self._check(x, self.dim, "encode")
        if self.training and self.sigma_in > 0:
            # \tilde x = x + \sigma_{in} \xi
            x = x + self.sigma_in * self._noise(noise, "xi", x)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (K, L) -> normalised vectors (K, D)."""
        self._check(z, self.latent_dim, "decode")
        return self.decoder(z)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor, noise: Mapping | None = None) -> torch.Tensor:
        r"""Training: :math:`z = \mu + \sigma\epsilon` (VAE only) :math:`+ \sigma_z\zeta`; eval: :math:`z = \mu`."""
        if not self.training:
            return mu
        z = mu
        if self.beta > 0:
            # z = \mu + \exp(\tfrac12 \log\sigma^2) \epsilon
            z = z + torch.exp(0.5 * logvar) * self._noise(noise, "eps", mu)
        if self.sigma_z > 0:
            # \tilde z = z + \sigma_z \zeta
            z = z + self.sigma_z * self._noise(noise, "zeta", z)
        return z

    def forward(self, x: torch.Tensor, noise: Mapping | None = None):
        """``(x_hat, mu, logvar)``; ``noise`` may fix ``xi``, ``eps``, ``zeta`` (else drawn)."""
        mu, logvar = self.encode(x, noise)
        return self.decode(self.reparameterize(mu, logvar, noise)), mu, logvar

    def loss(self, x: torch.Tensor, noise: Mapping | None = None) -> dict[str, torch.Tensor]:
        r"""``{"loss", "recon", "kl"}``: :math:`\tfrac1D\lVert x-\hat x\rVert^2 + \beta\,\tfrac1L\,KL` (kl is 0 for beta 0)."""
        x_hat, mu, logvar = self(x, noise)
        # \frac1D \lVert x - \hat x \rVert^2, averaged over the batch
        recon = F.mse_loss(x_hat, x)
        if self.beta <= 0:
            return {"loss": recon, "recon": recon, "kl": torch.zeros((), device=x.device)}
        # KL = \frac12 \sum_j (\mu_j^2 + \sigma_j^2 - \log\sigma_j^2 - 1), per latent dim
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}


def model_from_config(dim: int, cfg: Mapping[str, Any]) -> ParamVAE:
    """A fresh :class:`ParamVAE` for vectors of length ``dim`` with the sizes in ``cfg``."""
    return ParamVAE(dim, latent_dim=cfg["latent_dim"], hidden=cfg["hidden"], n_layers=cfg["n_layers"],
                    beta=cfg["beta"], sigma_in=cfg["sigma_in"], sigma_z=cfg["sigma_z"])


def train_vae(model: ParamVAE, vectors: torch.Tensor, cfg: Mapping[str, Any],
              generator: torch.Generator | None = None, device=None) -> dict[str, list[float]]:
    """Train ``model`` on normalised vectors (N, D) for ``cfg["epochs"]`` epochs of shuffled batches;
    return per-epoch ``loss``, ``recon``, ``kl``, ``lr``, and ``recon_eval`` at ``eval_epoch``s."""
    device = runtime.device(device)
    model.to(device)
    x = vectors.detach().to(device=device, dtype=torch.float32)
    model._check(x, model.dim, "train_vae")
    n = x.shape[0]
    batch_size = min(int(cfg["batch_size"]), n)
    gen = generator if generator is not None else torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    if float(cfg.get("permute_augment", 0.0)) != 0.0:   # a study that made every number worse: see the notes
        raise ValueError(f"permute_augment: expected 0 (permutation augmentation was removed), found {cfg['permute_augment']}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    # step decay: eta_e = eta_0 gamma^floor(e / lr_step)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(cfg["lr_step"])), gamma=float(cfg["lr_gamma"]))
    eval_every = max(1, int(cfg.get("eval_every", 10)))
    hist: dict[str, list[float]] = {k: [] for k in ("loss", "recon", "kl", "lr", "recon_eval", "eval_epoch")}
    step = 0
    for epoch in runtime.progress(range(int(cfg["epochs"])), desc="VAE epochs"):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            parts = model.loss(x[idx])
            runtime.check_finite(parts["loss"], model="parameter VAE", step=step, blame=f"lr={cfg['lr']}")
            step += 1
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
    model.eval()
    return hist


@torch.no_grad()
def reconstruction_mse(model: ParamVAE, x: torch.Tensor, batch_size: int = 256) -> float:
    r"""Noiseless :math:`\frac1{ND}\sum\lVert x - D(\mu(x))\rVert^2` on normalised vectors."""
    was_training = model.training
    model.eval()
    total = sum(F.mse_loss(model.decode(model.encode(x[s:s + batch_size])[0]), x[s:s + batch_size],
                           reduction="sum").item() for s in range(0, x.shape[0], batch_size))
    model.train(was_training)
    return total / x.numel()


def _raw_vectors(data) -> torch.Tensor:
    """A tensor (N, D) from a tensor or a :class:`helpers.weights.WeightDataset`."""
    return torch.as_tensor(data.vectors if hasattr(data, "vectors") else data).to(torch.float32)


def _normalizer(model: ParamVAE):
    if model.normalizer is None:
        raise RuntimeError("this ParamVAE has no weight normalizer attached; build it with "
                           "build_vae / build_or_load_vae, or set model.normalizer")
    return model.normalizer


@torch.no_grad()
def encode_dataset(model: ParamVAE, ds, batch_size: int = 256) -> torch.Tensor:
    r"""Raw weight vectors (tensor or WeightDataset) -> raw latent means :math:`\mu` (N, L) on the CPU."""
    x = _normalizer(model).normalize(_raw_vectors(ds))
    model.eval()
    dev = runtime.device_of(model)
    return torch.cat([model.encode(x[s:s + batch_size].to(dev))[0].cpu() for s in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def decode_latents(model: ParamVAE, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Raw latents (K, L) -> raw weight vectors (K, D) on the CPU: decode, then denormalise."""
    model.eval()
    dev = runtime.device_of(model)
    x_hat = torch.cat([model.decode(z[s:s + batch_size].to(dev)).cpu() for s in range(0, z.shape[0], batch_size)])
    return _normalizer(model).denormalize(x_hat)


@torch.no_grad()
def decode_to_vectors(model: ParamVAE, latents_std: torch.Tensor) -> torch.Tensor:
    r"""*Standardised* latents :math:`u` (K, L) -> raw weight vectors (K, D):
    :math:`z = \bar z + s\,u`, :math:`\hat w = m + s_w D_\theta(z)`. How notebooks 03 and 05 decode samples."""
    if model.latent_standardizer is None:
        raise RuntimeError("this ParamVAE has no latent standardizer; build it with build_vae")
    return decode_latents(model, model.latent_standardizer.unstandardize(latents_std.detach().cpu().float()))


@torch.no_grad()
def reconstruct(model: ParamVAE, ds) -> torch.Tensor:
    r"""Raw weight vectors -> their deterministic reconstructions :math:`D(\mu(x))`, raw."""
    return decode_latents(model, encode_dataset(model, ds))


@torch.no_grad()
def sample_prior(model: ParamVAE, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``n`` latents from the prior decoded to raw weight vectors (n, D): :math:`z \sim \mathcal N(0, I)`
    for a VAE, a diagonal Gaussian fitted to the training latents for a plain AE."""
    eps = torch.randn(n, model.latent_dim, generator=generator)
    return decode_latents(model, eps) if model.beta > 0 else decode_to_vectors(model, eps)


def save_vae(model: ParamVAE, path, history: Mapping[str, list[float]] | None = None,
             config: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None):
    """Weights, normaliser, latent statistics, spec, config and history in one safetensors file."""
    tensors = {f"history.{k}": torch.tensor(v, dtype=torch.float64) for k, v in (history or {}).items()}
    meta: dict[str, Any] = {"config": dict(config or {}), "spec": model.spec, "extra": dict(extra or {}),
                            "history_keys": sorted(history or {})}
    if model.normalizer is not None:
        tensors.update({f"normalizer.{k}": v for k, v in model.normalizer.state().items()})
        meta["normalizer"] = {}
    if model.latent_standardizer is not None:
        tensors.update({f"latent.{k}": v for k, v in model.latent_standardizer.state().items()})
    return artifacts.save_model(path, model, KIND, model.arch, tensors, meta)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def load_vae(path, dim: int | None = None, spec: Any = None, device=None) -> tuple[ParamVAE, dict]:
    """Load a file of :func:`save_vae`: ``(model in eval mode, info)``; a file made for another vector
    length ``dim`` or architecture ``spec`` raises :class:`helpers.artifacts.ArtifactError`."""
    def make(arch):
        if dim is not None and int(dim) != int(arch["dim"]):
            raise artifacts.ArtifactError(
                f"{path}: VAE for weight vectors of the wrong length: expected D={int(dim)}, "
                f"found D={arch['dim']} (a VAE trained on another architecture or zoo)")
        return ParamVAE(**arch)

    model, tensors, meta = artifacts.load_model(path, KIND, make, device=device,
                                                hint="Run notebook 02 to train the VAE again.")
    if spec is not None and meta.get("spec") is not None and _jsonable(spec) != _jsonable(meta["spec"]):
        raise artifacts.ArtifactError(f"{path}: VAE for another network architecture: expected spec "
                                      f"{_jsonable(spec)}, found {_jsonable(meta['spec'])}")
    model.spec = meta.get("spec")
    norm = {k[len("normalizer."):]: v for k, v in tensors.items() if k.startswith("normalizer.")}
    if norm:
        model.normalizer = weights.Normalizer.from_state(norm)
    if "latent.mean" in tensors:
        model.latent_standardizer = LatentStandardizer.from_state(
            {"mean": tensors["latent.mean"], "scale": tensors["latent.scale"]})
    history = {k: tensors[f"history.{k}"].tolist() for k in meta.get("history_keys", [])}
    return model, {"history": history, "config": meta.get("config", {}), "extra": meta.get("extra", {}),
                   "path": str(path)}


def build_vae(ds, vae_cfg: Mapping[str, Any], device=None) -> tuple[ParamVAE, dict]:
    """Fit the normaliser, train a VAE on a WeightDataset, fit the latent standardizer: ``(model, info)``."""
    torch.manual_seed(int(vae_cfg.get("seed", 0)))
    vectors = _raw_vectors(ds)
    normalizer = weights.Normalizer().fit(vectors, ds.spec)
    x = normalizer.normalize(vectors)
    model = model_from_config(x.shape[1], vae_cfg)
    model.normalizer, model.spec = normalizer, ds.spec
    start = time.perf_counter()
    history = train_vae(model, x, vae_cfg, device=device)
    seconds = time.perf_counter() - start
    model.latent_standardizer = LatentStandardizer.fit(encode_dataset(model, vectors))
    return model, {"history": history, "config": dict(vae_cfg),
                   "extra": {"train_seconds": seconds, "n_train": int(x.shape[0])}}


# The settings that change what is trained (the cache key, with the zoo's); n_eval, n_test and
# n_prior only choose what notebook 02 shows.
TRAIN_KEYS = ("seed", "latent_dim", "hidden", "n_layers", "beta", "sigma_in", "sigma_z", "epochs",
              "batch_size", "lr", "weight_decay", "lr_step", "lr_gamma", "eval_every")


def vae_key(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any]) -> dict:
    """The VAE's cache key: the zoo's key and the settings of :data:`TRAIN_KEYS`."""
    return {"zoo": weights.zoo_key(zoo_cfg), "vae": artifacts.training_key(vae_cfg, TRAIN_KEYS)}


def build_or_load_vae(zoo_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any], rebuild: bool = False,
                      ds=None, device=None) -> tuple[ParamVAE, dict]:
    """The VAE of ``vae_cfg`` on the zoo of ``zoo_cfg`` (or ``ds``), loaded if cached (:func:`vae_key`), else
    trained; ``info``: ``history``, ``config``, ``extra`` (``train_seconds``), ``path`` and ``dataset``."""
    if ds is None:
        ds = weights.build_or_load_zoo(zoo_cfg)
    key = vae_key(zoo_cfg, vae_cfg)

    def save(obj, path):
        save_vae(obj[0], path, history=obj[1]["history"], config=vae_cfg, extra=obj[1]["extra"])

    model, info = artifacts.cached("vae", key, build=lambda: build_vae(ds, vae_cfg, device=device), save=save,
                                   load=lambda path: load_vae(path, dim=ds.dim, spec=ds.spec, device=device),
                                   rebuild=rebuild)
    return model, {**info, "path": str(artifacts.artifact_path("vae", key)), "dataset": ds}


def format_table(rows: list[dict], columns: list[str] | None = None, digits: int = 2) -> str:
    """A fixed-width text table of dict rows (floats with ``digits`` decimals)."""
    columns = columns or list(rows[0])
    cells = [[f"{r[c]:.{digits}f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells])
