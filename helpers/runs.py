"""The run records ``<run>/metrics.csv`` (every headline number: ``notebook,name,value,preset``) and
``timings.csv``, merged one row at a time under a file lock, atomically; a damaged file is set aside."""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from . import config as _config
from .artifacts import atomic_write

FIELDS = ("notebook", "name", "value", "preset")
TIMING_FIELDS = ("notebook", "seconds", "status", "preset")


@contextmanager
def locked(path: Path):
    """Hold an exclusive ``fcntl`` lock on the folder of ``path`` for the block (no lock file left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)           # closing the descriptor releases the lock


def read_rows(path: Path, fields) -> list[list[str]]:
    """The data rows of a run-record CSV; a ValueError saying what is wrong if it is damaged."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if not rows or tuple(rows[0]) != tuple(fields):
        raise ValueError(f"expected the header {','.join(fields)}, found {','.join(rows[0]) if rows else 'nothing'}")
    number = 2 if "value" in fields else 1
    for i, row in enumerate(rows[1:], 2):
        try:
            ok = len(row) == len(fields) and float(row[number]) is not None
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"line {i} is not a row of {len(fields)} fields with a number as {fields[number]}: {row!r}")
    return rows[1:]


def merge_rows(path: str | os.PathLike, fields, new_rows, key: int = 2) -> Path:
    """Merge ``new_rows`` into the CSV ``path`` under its lock, atomically (a row whose first ``key`` fields
    match replaces it); a damaged file is renamed ``<name>.damaged-<time>`` and a fresh one started."""
    path = Path(path)
    with locked(path):
        rows = []
        if path.exists():
            try:
                rows = read_rows(path, fields)
            except ValueError as exc:
                aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
                path.rename(aside)
                print(f"warning: {path} is damaged ({exc}); set aside as {aside}, starting a fresh one")
        for new in new_rows:
            new = [str(x) for x in new]
            where = next((i for i, r in enumerate(rows) if r[:key] == new[:key]), None)
            if where is None:
                rows.append(new)
            else:
                rows[where] = new
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([list(fields)] + rows)
        with atomic_write(path, "w") as f:
            f.write(buf.getvalue())
    return path


def metric_tag(dataset: str | None = None, zoo: str = "trajectory") -> str:
    """A weight-story name's suffix: ``_<zoo>`` unless the trajectory zoo, ``_<dataset>`` unless MNIST."""
    name = _config.current_dataset(dataset)
    return ("" if zoo == "trajectory" else f"_{zoo}") + ("" if name == "mnist" else f"_{name}")


def is_accuracy(name: str) -> bool:
    """Whether a metric is an accuracy in %: ``acc`` is a word of its name and no difference word is."""
    words = set(name.lower().split("_"))
    return "acc" in words and not {"drop", "gap", "delta", "diff", "margin", "std", "gain", "change", "error",
                                   "err", "shift", "pp"} & words


def log_metric(notebook: str, name: str, value: float, preset: str | None = None, verbose: bool = True) -> None:
    """Record one headline number in ``<run>/metrics.csv`` (a re-run replaces its row) under ``preset`` (else
    the active one); NaN, inf and an accuracy outside [0, 100] (:func:`is_accuracy`) raise a ValueError."""
    preset = _config.active_preset(preset)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric {notebook} {name}: expected a number, found {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"metric {notebook} {name} is {value}: a non-finite number is never recorded "
                         f"(did the training diverge?)")
    if is_accuracy(name) and not 0 <= value <= 100:
        raise ValueError(f"metric {notebook} {name} = {value!r} is not an accuracy: expected a value in [0, 100] (%)")
    merge_rows(_config.run_dir() / "metrics.csv", FIELDS, [[notebook, name, repr(value), preset]])
    if verbose:
        print(f"[metric] {notebook} {name} = {value:.4g} ({preset})")


def log_timing(run: Path, notebook: str, seconds: float, status: str, preset: str) -> None:
    """Merge one notebook's row into ``<run>/timings.csv``."""
    merge_rows(Path(run) / "timings.csv", TIMING_FIELDS, [[notebook, f"{seconds:.1f}", status, preset]], key=1)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics CSV as dicts with ``value`` as float."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["value"] = float(row["value"])
    return rows
