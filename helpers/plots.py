"""Figures: :func:`save_figure` (PNG and PDF with stable bytes, into the preset's figure folder), and the
few plot helpers every notebook shares (they take ``ax=None`` and return the figure)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from . import config as _config
from .artifacts import atomic_write

# Metadata entries matplotlib would otherwise fill with dates and versions.
_STABLE_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}


def use_style() -> None:
    """The series' plot style (call it once; nothing is set on import)."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 150, "figure.figsize": (6, 4),
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "font.size": 10, "image.cmap": "viridis",
    })


def new_axes(ax=None, figsize=None):
    """Return ``(fig, ax)``: the given axes and its figure, or a new pair."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize)


class SavedPaths(list):
    """The paths :func:`save_figure` wrote: a list that shows nothing as a cell's last value."""

    def _ipython_display_(self) -> None:
        pass


def save_figure(fig, name: str, directory: str | Path | None = None, preset: str | None = None) -> SavedPaths:
    """Write ``fig`` as ``<figures>/<name>.png`` and ``.pdf`` (``<figures>``: ``directory``, else
    :func:`helpers.config.preset_figures_dir`); the same figure gives the same bytes."""
    directory = Path(directory) if directory else _config.preset_figures_dir(preset)
    paths = SavedPaths()
    for fmt, metadata in _STABLE_METADATA.items():
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        path = directory / f"{name}.{fmt}"
        with atomic_write(path) as f:
            f.write(buf.getvalue())
        paths.append(path)
    return paths


def to_numpy_images(images) -> np.ndarray:
    """Images as a float array (N, H, W, C) in [0, 1], from uint8/float, NCHW/NHWC."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim == 3:  # (N, H, W): grey
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W, C); got {arr.shape}")
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    arr = arr.astype(np.float32)
    if arr.max(initial=0) > 1.5:
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def image_grid(images, nrow: int | None = None, titles: Sequence[str] | None = None,
               ax=None, pad: int = 2, title: str | None = None):
    """Tile images (N, C, H, W) or (N, H, W, C) into one picture; return the figure."""
    arr = to_numpy_images(images)
    n, h, w, c = arr.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    canvas = np.ones((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h,
               pad + k * (w + pad): pad + k * (w + pad) + w] = arr[i]
    fig, ax = new_axes(ax, figsize=(max(2.0, nrow * 0.6), max(2.0, ncol * 0.6)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if titles is not None:
        for i, t in enumerate(titles[:n]):
            r, k = divmod(i, nrow)
            ax.text(pad + k * (w + pad) + w / 2, pad + r * (h + pad) - 1, t,
                    ha="center", va="bottom", fontsize=7)
    return fig


def line_plot(series: dict[str, Sequence[float]], xlabel: str = "step", ylabel: str = "",
              title: str | None = None, ax=None, logy: bool = False):
    """Several named curves on one axes (loss curves and the like); return the figure."""
    fig, ax = new_axes(ax)
    for label, ys in series.items():
        ax.plot(np.arange(len(ys)), ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    return fig


def project_2d(points, method: str = "pca", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Points (N, d) -> (N, 2) by scikit-learn: ``"pca"`` or ``"tsne"`` (PCA-initialised, ``perplexity``
    at most (N - 1) / 3), seeded."""
    if method not in ("pca", "tsne"):
        raise ValueError(f"unknown projection {method!r}: expected 'pca' or 'tsne'")
    z = points.detach().cpu().numpy() if hasattr(points, "detach") else np.asarray(points)
    z = z.reshape(len(z), -1).astype(np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit_transform(z)
    from sklearn.manifold import TSNE
    perplexity = float(min(perplexity, max(2.0, (len(z) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
