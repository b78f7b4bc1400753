"""Denoising animations: frames computed once, shown three ways.

A sampling run is recorded once as a list of frames (RGB uint8 arrays). The same
frames then become

- an interactive slider (:func:`frame_slider`, ipywidgets, ``continuous_update=False``),
- a looping GIF (:func:`write_gif`, imageio), and
- a static grid (:func:`frames_grid`) for places where widgets do not render
  (GitHub, HTML exports, PDF reports).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from . import config as _config
from .artifacts import atomic_write


def fig_to_array(fig, dpi: int = 80, close: bool = True) -> np.ndarray:
    """Render a matplotlib figure to an RGB uint8 array (H, W, 3)."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if close:
        plt.close(fig)
    return arr


def _as_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for f in frames:
        a = np.asarray(f)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(a)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ValueError(f"all frames must have one shape; got {sorted(shapes)}")
    return out


def write_gif(frames: Sequence[np.ndarray], name: str | Path, fps: float = 8,
              hold_last: int = 4, directory: str | Path | None = None) -> Path:
    """Write frames as a looping GIF to ``<figures>/<name>.gif`` (atomically).

    ``hold_last`` shows the final frame that many frame-times longer, so the
    loop pauses on the result. The GIF holds exactly ``len(frames)`` frames.
    """
    import imageio.v3 as iio

    frames = _as_frames(frames)
    durations = [1000.0 / fps] * len(frames)
    durations[-1] *= 1 + hold_last
    path = Path(name)
    if path.suffix != ".gif":
        path = path.with_suffix(".gif")
    if not path.is_absolute():
        path = (Path(directory) if directory else _config.figures_dir()) / path
    data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif",
                       duration=durations, loop=0)
    with atomic_write(path) as f:
        f.write(data)
    return path


def gif_frame_count(path: str | Path) -> int:
    """Number of frames in a GIF file."""
    import imageio.v3 as iio

    return int(iio.improps(path, index=None).shape[0])


def frames_grid(frames: Sequence[np.ndarray], captions: Sequence[str] | None = None,
                n: int = 8, ncols: int | None = None):
    """A static figure of ``n`` evenly spaced frames (always including the last)."""
    import matplotlib.pyplot as plt

    frames = _as_frames(frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    ncols = ncols or len(idx)
    nrows = int(np.ceil(len(idx) / ncols))
    h, w = frames[0].shape[:2]
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols * w / max(h, w) + 0.2,
                                                    2.2 * nrows * h / max(h, w) + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, idx):
        ax.imshow(frames[i])
        ax.set_title(captions[i] if captions is not None else f"frame {i}", fontsize=8)
    fig.tight_layout()
    return fig


def _png_bytes(frame: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", frame, extension=".png")


class FrameSlider:
    """An ipywidgets slider over precomputed frames.

    ``slider`` (an ``IntSlider``), ``image`` (an ``Image`` widget) and ``label``
    (an ``HTML`` caption) are public so that a test can set ``slider.value`` and
    check what is shown, with no browser. Display it with ``display(s.widget)``
    or just by leaving ``s`` as the last expression of a cell.
    """

    def __init__(self, frames: Sequence[np.ndarray], captions: Sequence[str] | None = None,
                 description: str = "step"):
        import ipywidgets as widgets

        self.frames = _as_frames(frames)
        self.captions = list(captions) if captions is not None else [
            f"frame {i}" for i in range(len(self.frames))]
        if len(self.captions) != len(self.frames):
            raise ValueError(f"{len(self.frames)} frames but {len(self.captions)} captions")
        self._png = [None] * len(self.frames)
        self.slider = widgets.IntSlider(value=0, min=0, max=len(self.frames) - 1, step=1,
                                        description=description, continuous_update=False)
        self.image = widgets.Image(format="png")
        self.label = widgets.HTML()
        self.slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.slider, self.label, self.image])
        self.show(0)

    def _on_change(self, change) -> None:
        self.show(change["new"])

    def show(self, i: int) -> None:
        """Show frame ``i`` (also what moving the slider does)."""
        if self._png[i] is None:
            self._png[i] = _png_bytes(self.frames[i])
        self.image.value = self._png[i]
        self.label.value = f"<b>{self.captions[i]}</b>"
        if self.slider.value != i:
            self.slider.value = i

    @property
    def current(self) -> int:
        return int(self.slider.value)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def frame_slider(frames: Sequence[np.ndarray], captions: Sequence[str] | None = None,
                 description: str = "step") -> FrameSlider:
    """Build a :class:`FrameSlider` over precomputed frames."""
    return FrameSlider(frames, captions, description)
