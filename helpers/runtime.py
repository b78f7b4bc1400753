"""Reproducibility and the machine: seeds, device, CPU threads, progress bars, timers, early checks.

Every notebook calls ``device = runtime.setup(seed=cfg.seed, needs=["mnist"])`` once; ``device=None``: that one.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from . import config as _config
from .config import SettingError, env_choice, env_int


class DivergenceError(_config.ShortError, FloatingPointError):
    """Training produced NaN or inf; the message names the model, the step and the settings to blame."""


def check_finite(value, model: str, step: int | None = None, blame: str = "") -> None:
    """Raise :class:`DivergenceError` if the loss ``value`` holds NaN or inf, naming ``blame`` (e.g. "lr=0.1")."""
    values = torch.as_tensor(value).detach().flatten().cpu()
    bad = values[~torch.isfinite(values)]
    if len(bad):
        at = f" at step {step}" if step is not None else ""
        raise DivergenceError(f"training of {model} diverged{at}: the loss is {float(bad[0])}; nothing was saved"
                              + (f"; the settings most likely to blame: {blame} (lower them)" if blame else ""))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a ``torch.Generator`` seeded the same way (for samplers)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """``prefer``, else ``$LDT_DEVICE`` (cpu, cuda, cuda:N or mps, present here), else CUDA, MPS or the CPU."""
    name, what = prefer or os.environ.get("LDT_DEVICE", "").strip(), "device" if prefer else "LDT_DEVICE"
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    here = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if has_mps else []))
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise SettingError(f"{what}={name!r} is not accepted: expected cpu, cuda, cuda:N or mps (available here: {here})")
    if (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()) or (device.type == "mps" and not has_mps):
        raise SettingError(f"{what}={name!r} is not accepted: this device is not available here (available here: {here})")
    return device


def busy_cores(samples: int = 3, interval: float = 0.005) -> int:
    """Cores kept busy by other processes: the fewest runnable tasks in ``/proc/stat`` minus this one (0 if none)."""
    counts = []
    for i in range(samples):
        try:
            counts += [int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                       if line.startswith("procs_running")]
        except (OSError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts) - 1) if counts else 0


def choose_threads() -> tuple[int, str]:
    """One torch thread per core that other processes are not keeping busy, and why."""
    cores = os.cpu_count() or 1
    busy = busy_cores() if cores > 1 else 0
    return max(1, cores - busy), (f"{cores} cores, {busy} busy with other processes" if busy else f"{cores} idle cores")


_THREADS = {"auto": False, "n": 0, "why": "", "checked": 0.0}
_DEVICE: dict[str, torch.device | None] = {"device": None}


def setup_threads(n: int | None = None) -> int:
    """Set torch's CPU threads: ``n``, else ``$LDT_NUM_THREADS``, else one per idle core (bench_threads.py)."""
    why = "argument"
    if n is None:
        n, why = env_int("LDT_NUM_THREADS", 1, maximum=_config.max_threads()), "LDT_NUM_THREADS"
    auto = not n
    if auto:
        n, why = choose_threads()
    torch.set_num_threads(n)
    _THREADS.update(auto=auto, n=n, why=why, checked=time.monotonic())
    return n


def recheck_threads(min_interval: float = 3.0) -> int:
    """Re-choose the automatic thread count (at most every ``min_interval`` s); return the count in use."""
    current = torch.get_num_threads()
    if not _THREADS["auto"] or current != _THREADS["n"] or time.monotonic() - _THREADS["checked"] < min_interval:
        return current
    n, why = choose_threads()
    if n != current:
        torch.set_num_threads(n)
    _THREADS.update(n=n, why=why, checked=time.monotonic())
    return n


@functools.cache
def keep_freed_memory(mmap_threshold_mb: int = 32) -> bool:
    """Let glibc keep freed memory for the next tensor (fewer page faults); True if it took effect."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")    # mallopt: M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1
        return bool(libc.mallopt(-3, int(mmap_threshold_mb) << 20)) and bool(libc.mallopt(-1, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def set_device(dev: str | torch.device | None) -> torch.device | None:
    """Record ``dev`` as the device for ``device=None`` (None: the CPU); return the one recorded before."""
    before = _DEVICE["device"]
    _DEVICE["device"] = None if dev is None else torch.device(dev)
    return before


def device(dev: str | torch.device | None = None) -> torch.device:
    """``dev`` as a ``torch.device`` if given, else the device :func:`setup` chose (the CPU before)."""
    return torch.device(dev) if dev is not None else _DEVICE["device"] or torch.device("cpu")


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model lives on (its first parameter's; the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True, needs=()) -> torch.device:
    """Check the ``LDT_*`` variables, folders and the datasets in ``needs``; then seed, set threads and device."""
    _config.install_short_errors()
    env = _config.check_environment()
    dev = get_device()
    _config.check_data([needs] if isinstance(needs, str) else needs)
    seed_everything(seed)
    keep_freed_memory()
    n = setup_threads(threads)
    set_device(dev)
    if verbose:
        print(f"seed {seed} | device {dev} | torch threads {n} ({_THREADS['why']}) | torch {torch.__version__}")
        run = _config.run_dir() if os.environ.get("LDT_RUN_DIR") or _config._RUN_DIR else "made by the first metric"
        print(f"folders: data {env['data']} | artifacts {env['artifacts']} | "
              f"figures {_config.preset_figures_dir()} | run {run}")
    return dev


def environment_report() -> dict[str, str]:
    """Versions of Python and the main packages, and the hardware, as a dict."""
    import importlib.metadata as md

    report = {"python": platform.python_version(), "platform": platform.platform(),
              "cpu cores": str(os.cpu_count()), "device": str(get_device())}
    for pkg in ("torch", "torchvision", "numpy", "matplotlib", "scikit-learn", "imageio",
                "ipywidgets", "safetensors", "jupyterlab"):
        try:
            report[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            report[pkg] = "not installed"
    return report


def progress(iterable=None, **kwargs):
    """A ``tqdm.auto`` progress bar (off with ``LDT_PROGRESS=0``) that re-checks the thread count."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        def update(self, n=1):
            recheck_threads()
            return super().update(n)

        def __iter__(self):
            for item in super().__iter__():
                recheck_threads()
                yield item

    kwargs.setdefault("disable", env_choice("LDT_PROGRESS", ("0", "1"), default="1") == "0")
    kwargs.setdefault("leave", False)
    recheck_threads()
    return _Bar(iterable, **kwargs)


@contextmanager
def timer(label: str | None = None, verbose: bool = True):
    """Time a block: ``with timer("training") as t: ...``; then ``t["seconds"]``."""
    result = {"seconds": float("nan")}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        if verbose and label:
            print(f"{label}: {result['seconds']:.1f} s")
