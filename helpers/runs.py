"""Run folders and the metrics CSV that holds every headline number.

`make run` executes the notebooks into ``runs/<timestamp>/`` and sets
``LDT_RUN_DIR`` so that every notebook appends its headline numbers to the same
``metrics.csv`` (long format: ``notebook,name,value,preset``). A notebook run by
hand in JupyterLab gets a run folder of its own, made on first use.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from . import config as _config

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


def log_metric(notebook: str, name: str, value: float, preset: str | None = None,
               verbose: bool = True) -> float:
    """Append one headline number to ``<run>/metrics.csv`` and return it."""
    preset = _config.current_preset(preset)
    value = float(value)
    path = run_dir() / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(FIELDS)
        writer.writerow([notebook, name, repr(value) if math.isfinite(value) else str(value), preset])
    if verbose:
        print(f"[metric] {notebook} {name} = {value:.4g} ({preset})")
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics CSV as dicts with ``value`` as float."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["value"] = float(row["value"])
    return rows
