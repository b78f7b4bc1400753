"""Denoising animations: frames (RGB uint8) shown as a slider, a looping GIF and a static grid (for
places where widgets do not render: GitHub, HTML, PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import config as _config
from .artifacts import atomic_write


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
              directory: str | Path | None = None, preset: str | None = None) -> Path:
    """Write frames as a looping GIF ``<figures>/<name>.gif`` (atomically; the preset's figure folder)
    of exactly ``len(frames)`` frames, the last one shown 5 frame-times."""
    import imageio.v3 as iio

    frames = _as_frames(frames)
    durations = [1000.0 / fps] * len(frames)
    durations[-1] *= 5
    path = Path(name).with_suffix(".gif")
    if not path.is_absolute():
        path = (Path(directory) if directory else _config.preset_figures_dir(preset)) / path
    data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif",
                       duration=durations, loop=0)
    with atomic_write(path) as f:
        f.write(data)
    return path


def frames_grid(frames: Sequence[np.ndarray], captions: Sequence[str] | None = None,
                n: int = 8, ncols: int | None = None, frame_dpi: float = 80, max_width: float = 13.0,
                titles: bool = True):
    """A static figure of ``n`` evenly spaced frames (the last included) at their own size (``frame_dpi``), as
    many per row as fit in ``max_width`` inches unless ``ncols`` is given; ``titles=False``: no captions."""
    import matplotlib.pyplot as plt

    frames = _as_frames(frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    h, w = frames[0].shape[:2]
    panel_w, panel_h = w / frame_dpi, h / frame_dpi
    if ncols is None:
        ncols = max(1, min(len(idx), int(max_width // panel_w)))
    if panel_w * ncols > max_width:  # more columns asked for than fit: shrink the frames
        panel_w, panel_h = max_width / ncols, panel_h * max_width / (ncols * panel_w)
    nrows = int(np.ceil(len(idx) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, (panel_h + 0.35) * nrows),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, idx):
        ax.imshow(frames[i], interpolation="antialiased")
        if titles:
            ax.set_title(captions[i] if captions is not None else f"frame {i}", fontsize=11)
    fig.tight_layout(pad=0.3)
    return fig


def _png_bytes(frame: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", frame, extension=".png")


class FrameSlider:
    """An ipywidgets slider over precomputed frames, as wide as the output; ``slider``, ``image`` and
    ``label`` (the caption; leave ``captions`` out when the frames carry their own) are public for tests."""

    def __init__(self, frames: Sequence[np.ndarray], captions: Sequence[str] | None = None,
                 description: str = "step"):
        import ipywidgets as widgets

        self.frames = _as_frames(frames)
        self.captions = list(captions) if captions is not None else None
        if self.captions is not None and len(self.captions) != len(self.frames):
            raise ValueError(f"{len(self.frames)} frames but {len(self.captions)} captions")
        self._png = [None] * len(self.frames)
        self.slider = widgets.IntSlider(value=0, min=0, max=len(self.frames) - 1, step=1,
                                        description=description, continuous_update=False,
                                        layout=widgets.Layout(width="100%"))
        h, w = self.frames[0].shape[:2]
        self.image = widgets.Image(format="png", layout=widgets.Layout(
            width="100%", max_width=f"{max(w, 640)}px", height="auto", object_fit="contain"))
        self.label = widgets.HTML()
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        children = [self.slider] + ([self.label] if self.captions is not None else []) + [self.image]
        self.widget = widgets.VBox(children, layout=widgets.Layout(width="100%"))
        self.show(0)

    def show(self, i: int) -> None:
        """Show frame ``i`` (also what moving the slider does)."""
        if self._png[i] is None:
            self._png[i] = _png_bytes(self.frames[i])
        self.image.value = self._png[i]
        self.label.value = f"<b>{self.captions[i]}</b>" if self.captions is not None else ""
        if self.slider.value != i:
            self.slider.value = i

    @property
    def current(self) -> int:
        return int(self.slider.value)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


frame_slider = FrameSlider   # frame_slider(frames, captions=None, description="step")
