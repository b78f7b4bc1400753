r"""Judging generated digits, choosing the guidance weight without the judge, and the figures of notebook 06.

- **The judge** is a CNN of :mod:`helpers.classifiers` trained on real training
  images only (with random shifts). Its accuracy on generated digits of a requested
  class is the *class consistency*; its penultimate features give a Fréchet
  distance (:func:`helpers.image_eval.frechet_distance`) set beside the real-vs-real
  floor; :func:`helpers.image_eval.nearest_neighbours` checks for copies.
- **Choosing the guidance weight** :math:`w` must not use the judge. We pick it
  on the *validation* codes instead (:func:`choose_guidance`), with two judge-free
  numbers per :math:`w`: the class-conditional Fréchet distance in the latent space
  to the validation codes of each class,

  .. math:: \mathrm{FD}_{lat}(w) = \frac1{10}\sum_c \mathrm{FD}\big(\{z^{gen}_c(w)\}, \{z^{val}_c\}\big),

  (small when samples land in the right class *and* cover it), and the class
  consistency of a *selection classifier* on latents (the VAE's own class head). The
  lowest FD among the :math:`w` whose selector consistency reaches a target wins.
"""

from __future__ import annotations

import numpy as np
import torch

from . import artifacts, classifiers, data, runtime
from . import config as _config
from .image_eval import frechet_distance, nearest_neighbours, tile


__all__ = ["train_cnn", "build_or_load_cnn", "cnn_features", "judge", "latent_class_fd", "choose_guidance", "tile_gray",
           "confusion_figure", "sizes_figure", "steps_figure", "try_emnist", "frechet_distance",
           "nearest_neighbours"]


def _spec(dataset: str, spec: dict) -> dict:
    # the series' MNIST CNN layout (5x5 and 3x3 stride-2 convs), with the widths of ``spec``
    return {**classifiers.default_spec(dataset, "cnn"), **spec}


def train_cnn(dataset: str, x_uint8: torch.Tensor, y: torch.Tensor, spec: dict, epochs: float = 3,
              seed: int = 0, shift: int = 2, lr: float = 2e-3, device=None):
    """A :mod:`helpers.classifiers` CNN (the series' layout, widths from ``spec``) trained on real images
    on ``device`` (None: :func:`helpers.runtime.device`).

    Returns the model (eval mode, on ``device``) and its parameter count.
    """
    full = _spec(dataset, spec)
    model = classifiers.build_model(full, seed=seed).to(runtime.device(device))
    xn = data.normalize(x_uint8, dataset)
    classifiers.train_epochs(model, xn, y, epochs=epochs, batch_size=128, lr=lr,
                             generator=torch.Generator().manual_seed(seed), augment_shift=shift,
                             progress=True)
    return model.eval(), classifiers.count_params(full)


def _prep(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """uint8 or [0, 1] float images -> the classifiers' normalised input."""
    x = images.float() * 255.0 if images.dtype != torch.uint8 else images
    return data.normalize(x, dataset)


@torch.no_grad()
def cnn_features(model, images: torch.Tensor, dataset: str, batch_size: int = 2000):
    """``(probabilities (N, 10), penultimate features (N, F))`` of images (uint8 or [0, 1]), on the
    CPU (the network runs on its own device)."""
    spec = model.spec
    params = dict(model.named_parameters())
    n_fc = len(classifiers._hidden(spec)) + 1
    last = f"fc{n_fc - 1}"
    trunk = {k: v for k, v in params.items() if not k.startswith(last)}
    # the same network without its last layer: n_classes := width of the last hidden layer
    trunk_spec = {**spec, "hidden": classifiers._hidden(spec)[:-1], "n_classes": classifiers._hidden(spec)[-1]}
    dev = params[f"{last}.weight"].device
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = _prep(images[i:i + batch_size], dataset).to(dev)
        f = torch.relu(classifiers.forward(trunk, x, trunk_spec))
        feats.append(f.cpu())
        probs.append(torch.nn.functional.linear(f, params[f"{last}.weight"], params[f"{last}.bias"]).softmax(-1).cpu())
    return torch.cat(probs), torch.cat(feats)


def judge(model, images: torch.Tensor, labels: torch.Tensor, dataset: str,
          real_features: torch.Tensor | None = None) -> dict:
    """Class consistency (%) of ``images`` generated for ``labels``, and their feature FD to ``real_features``."""
    probs, feats = cnn_features(model, images, dataset)
    out = {"class_consistency": 100.0 * (probs.argmax(1) == torch.as_tensor(labels)).float().mean().item()}
    if real_features is not None:
        out["feature_fd"] = frechet_distance(feats, real_features)
    return out


def latent_class_fd(z_gen: torch.Tensor, y_gen: torch.Tensor, z_ref: torch.Tensor, y_ref: torch.Tensor) -> float:
    """Mean over classes of the Fréchet distance between generated and reference codes of that class."""
    classes = sorted(set(torch.as_tensor(y_gen).tolist()))
    return float(np.mean([frechet_distance(z_gen[y_gen == c], z_ref[y_ref == c]) for c in classes]))


def choose_guidance(sample_fn, grid, z_val: torch.Tensor, y_val: torch.Tensor, n_per_class: int,
                    n_classes: int = 10, selector=None, target: float | None = None) -> tuple[float, dict]:
    """Choose the guidance weight of ``grid`` on validation codes, without the judge.

    ``sample_fn(labels, w)`` returns standardised codes for ``labels``; ``z_val``/``y_val``
    are standardised validation codes. Every ``w`` gets its :func:`latent_class_fd`; with a
    ``selector`` (codes -> predicted labels, e.g. the VAE's latent head) also its selector
    class consistency (%). Rule: the lowest latent FD among the ``w`` whose selector
    consistency reaches ``target``; if none does (or no selector), the lowest FD overall.
    Returns ``(w, {w: {"latent_fd", "selector_consistency"}})``.
    """
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    table = {}
    for w in grid:
        z = sample_fn(labels, float(w))
        row = {"latent_fd": latent_class_fd(z, labels, z_val, y_val)}
        if selector is not None:
            row["selector_consistency"] = 100.0 * (selector(z) == labels).float().mean().item()
        table[float(w)] = row
    ok = [w for w, r in table.items() if target is None or r.get("selector_consistency", 0.0) >= target]
    pool = ok or list(table)
    return min(pool, key=lambda w: table[w]["latent_fd"]), table


def tile_gray(images: torch.Tensor, nrow: int, pad: int = 1, scale: int = 2) -> np.ndarray:
    """(N, 1, H, W) images in [0, 1] -> one RGB uint8 picture (rows of ``nrow``), for GIF frames."""
    return tile(images.expand(-1, 3, -1, -1), nrow, pad, scale)


def confusion_figure(cm: torch.Tensor, names, title: str = ""):
    """A confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.imshow(np.log1p(cm), cmap="Blues")
    ax.grid(False)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if i == j else "black")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def sizes_figure(params, consistency, bayes, labels=None):
    """Class consistency and Bayes-rule accuracy (%) against generator parameters, one axes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(params, consistency, "o-", label="class consistency of samples (judge)")
    ax.plot(params, bayes, "s-", label="Bayes-rule test accuracy")
    for p, c, name in zip(params, consistency, labels or []):
        ax.annotate(name, (p, c), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    ax.set_xscale("log")
    ax.set_xlabel("generator parameters")
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def steps_figure(steps, series: dict[str, dict[str, list[float]]], floor: float | None = None):
    """Two panels against sampling steps: class consistency and feature FD, one line per sampler."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, vals in series.items():
        axes[0].plot(steps, vals["class_consistency"], "o-", label=name)
        axes[1].plot(steps, vals["feature_fd"], "o-", label=name)
    if floor is not None:
        axes[1].axhline(floor, color="gray", ls="--", label="real vs real")
    for ax, t in zip(axes, ("class consistency (%)", "feature FD (judge)")):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps (Heun: 2 calls each)")
        ax.set_title(t, fontsize=9)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def try_emnist(root=None, split: str = "balanced"):
    """EMNIST through torchvision's own download, if the network allows it; else None with a message.

    Returns ``(x_train, y_train, x_test, y_test)`` as uint8 (N, 1, 28, 28) / int64, or None.
    """
    import shutil
    import socket
    from pathlib import Path

    root = root or (_config.repo_root() / "data")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        from torchvision.datasets import EMNIST

        sets = [EMNIST(str(root), split=split, train=tr, download=True) for tr in (True, False)]
    except Exception as exc:  # no network, a blocked host, a partial download: all mean "skip"
        folder = Path(root) / "EMNIST"
        if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder)  # leave no empty folders behind
        print(f"EMNIST ({split}) skipped: torchvision could not download it here "
              f"({type(exc).__name__}: {str(exc)[:120]}). Everything else in this notebook runs without it.")
        return None
    finally:
        socket.setdefaulttimeout(old)
    out = []
    for s in sets:
        # EMNIST images are stored transposed
        out += [s.data.transpose(1, 2)[:, None].contiguous(), s.targets.long()]
    return tuple(out)


def build_or_load_cnn(cfg, role: str, dataset: str, x_uint8: torch.Tensor, y: torch.Tensor,
                      rebuild: bool = False, device=None):
    """The ``role`` CNN (``"judge"`` or ``"cnn"``: settings ``<role>_spec``, ``<role>_epochs``,
    ``<role>_shift``, the random-shift augmentation in pixels), cached.

    Returns ``(model, n_parameters)``, the model trained and returned on ``device`` (None:
    :func:`helpers.runtime.device`).
    """
    if role not in ("judge", "cnn"):
        raise ValueError(f"unknown CNN role {role!r}: expected 'judge' or 'cnn'")
    key = {"seed": cfg["seed"], "spec": cfg[f"{role}_spec"], "epochs": cfg[f"{role}_epochs"],
           "shift": cfg[f"{role}_shift"], "n_train": cfg["n_train"], "val_size": cfg["val_size"],
           "dataset": dataset}
    full = _spec(dataset, cfg[f"{role}_spec"])

    def build():
        return train_cnn(dataset, x_uint8, y, cfg[f"{role}_spec"], cfg[f"{role}_epochs"], seed=cfg["seed"],
                         shift=cfg[f"{role}_shift"], device=device)[0]

    def save(model, path):
        artifacts.save_model(path, model, "digit_cnn", {"spec": full}, metadata={"config": key})

    def load(path):
        return artifacts.load_model(path, "digit_cnn", lambda arch: classifiers.build_model(arch["spec"]),
                                    device=device)[0]

    model = artifacts.cached(f"digit_{role}_{dataset}", key, build, save, load, rebuild=rebuild)
    return model, classifiers.count_params(full)
