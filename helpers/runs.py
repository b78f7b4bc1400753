"""Run folders and the metrics CSV that holds every headline number.

`make run` executes the notebooks into ``runs/<timestamp>/`` and sets
``LDT_RUN_DIR`` so that every notebook records its headline numbers in the same
``metrics.csv`` (long format: ``notebook,name,value,preset``). A notebook run by
hand in JupyterLab gets a run folder of its own, made on first use.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path

from . import config as _config
from .artifacts import atomic_write

FIELDS = ("notebook", "name", "value", "preset")
_RUN_DIR: Path | None = None


def timestamp() -> str:
    """``YYYYmmdd-HHMMSS`` in local time (the run-folder name)."""
    return time.strftime("%Y%m%d-%H%M%S")


def new_run_dir(root: Path | None = None) -> Path:
    """Create and return a fresh ``runs/<timestamp>`` folder (suffixed if it exists)."""
    root = Path(root) if root else _config.runs_dir()
    base = root / timestamp()
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    path.mkdir(parents=True)
    return path


def run_dir() -> Path:
    """The current run folder: ``$LDT_RUN_DIR``, else one made for this process."""
    global _RUN_DIR
    env = os.environ.get("LDT_RUN_DIR")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if _RUN_DIR is None:
        _RUN_DIR = new_run_dir()
    return _RUN_DIR


def metric_tag(dataset: str | None = None, zoo: str = "trajectory") -> str:
    """The suffix of a weight-story notebook's metric and figure names.

    MNIST's trajectory zoo keeps the plain names; another zoo adds ``_<zoo>``, another
    dataset ``_<dataset>`` (``dataset`` None: ``$LDT_DATASET``, else "mnist"), so
    ``"generated_median_acc" + metric_tag("cifar10")`` is ``generated_median_acc_cifar10``.
    """
    name = _config.current_dataset(dataset)
    return ("" if zoo == "trajectory" else f"_{zoo}") + ("" if name == "mnist" else f"_{name}")


def log_metric(notebook: str, name: str, value: float, preset: str | None = None,
               verbose: bool = True) -> None:
    """Record one headline number in ``<run>/metrics.csv``.

    The row is filed under ``preset``, else the preset the notebook runs in
    (its parameters cell, via :func:`helpers.config.get_config`), else
    ``$LDT_PRESET``. A metric is held once per run: logging it again (a cell
    re-run) replaces its row. The file is rewritten atomically. Returns
    nothing, so a cell that ends with it shows only the ``[metric]`` line.
    """
    preset = _config.active_preset(preset)
    value = float(value)
    path = run_dir() / "metrics.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f)][1:]
    text = repr(value) if math.isfinite(value) else str(value)
    new_row = [notebook, name, text, preset]
    keep = [r for r in rows if r[:2] != [notebook, name]]
    where = next((i for i, r in enumerate(rows) if r[:2] == [notebook, name]), len(keep))
    keep.insert(where, new_row)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows(keep)
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
    if verbose:
        print(f"[metric] {notebook} {name} = {value:.4g} ({preset})")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics CSV as dicts with ``value`` as float."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["value"] = float(row["value"])
    return rows
