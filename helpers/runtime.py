"""Reproducibility and the machine: seeds, device, CPU threads, progress bars, timers, early checks.

Every notebook calls :func:`setup` once at the top; it checks everything before any work starts
(environment variables, writable folders, the datasets it needs) and prints the absolute folders::

    device = runtime.setup(seed=cfg.seed, needs=["mnist"])

Helpers that train or sample take ``device=None``: the device :func:`setup` chose. Random numbers
come from seeded CPU generators, so a run draws the same noise on any device. Training loops call
:func:`check_finite`, so a diverging run stops at once naming the model, the step and the settings.
"""

from __future__ import annotations

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
    """Raise :class:`DivergenceError` if ``value`` (a loss: number or tensor) holds NaN or inf; ``blame``:
    the settings most likely at fault, e.g. ``f"lr={cfg.lr}"``."""
    values = torch.as_tensor(value).detach().flatten()
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
    """``prefer``, else ``$LDT_DEVICE`` (it must exist: :class:`SettingError`), else CUDA, MPS or the CPU."""
    name = prefer or os.environ.get("LDT_DEVICE", "").strip()
    if name:
        return check_device(name, "device" if prefer else "LDT_DEVICE")
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def check_device(name: str, what: str = "device") -> torch.device:
    """``torch.device(name)`` if it is cpu, cuda, cuda:N or mps and present on this machine."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
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
    """Cores kept busy by other processes now: the fewest runnable tasks in ``samples`` reads of
    ``/proc/stat``, minus this process (0 where there is no ``/proc``)."""
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


# What setup_threads chose, so that training loops can re-check the load.
_THREADS = {"auto": False, "n": 0, "why": "", "checked": 0.0}


def setup_threads(n: int | None = None, verbose: bool = False) -> int:
    """Set torch's CPU threads: ``n``, else ``$LDT_NUM_THREADS`` (1 to 4 x cores), else one per idle core.

    torch's OpenMP threads spin while they wait for each other, so a thread on a core that another
    process keeps busy slows every operation (measured: benchmarks/bench_threads.py). The automatic
    count follows the load: :func:`progress` re-checks it while loops run (:func:`recheck_threads`).
    """
    why = "argument"
    if n is None:
        n, why = env_int("LDT_NUM_THREADS", 1, maximum=_config.max_threads()), "LDT_NUM_THREADS"
    auto = not n
    if auto:
        n, why = choose_threads()
    torch.set_num_threads(n)
    _THREADS.update(auto=auto, n=n, why=why, checked=time.monotonic())
    if verbose:
        print(f"torch threads: {n} ({why})")
    return n


def recheck_threads(min_interval: float = 3.0) -> int:
    """Re-choose the automatic thread count for the load now (at most every ``min_interval`` s,
    and only if nobody set another count since); return the count in use."""
    current = torch.get_num_threads()
    if not _THREADS["auto"] or current != _THREADS["n"] or time.monotonic() - _THREADS["checked"] < min_interval:
        return current
    n, why = choose_threads()
    if n != current:
        torch.set_num_threads(n)
    _THREADS.update(n=n, why=why, checked=time.monotonic())
    return n


_ALLOCATOR = {"tuned": None}


def keep_freed_memory(mmap_threshold_mb: int = 32) -> bool:
    """Let glibc keep freed memory for the next tensor instead of returning it to the system; True
    if it took effect. A training step allocates afresh, and returned pages cost page faults on every
    step (measured: 64 stacked MNIST CNNs, 1.6-2.1 ms per network-step before, 1.0-1.1 ms after);
    the computation does not change. The first call decides; later calls return its result."""
    if _ALLOCATOR["tuned"] is None:
        ok = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            import ctypes
            try:
                libc = ctypes.CDLL("libc.so.6")    # mallopt: M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1
                ok = bool(libc.mallopt(-3, int(mmap_threshold_mb) << 20)) and bool(libc.mallopt(-1, 2 ** 31 - 1))
            except (OSError, AttributeError):
                ok = False
        _ALLOCATOR["tuned"] = ok
    return _ALLOCATOR["tuned"]


_DEVICE: dict[str, torch.device | None] = {"device": None}


def set_device(dev: str | torch.device | None) -> torch.device | None:
    """Record ``dev`` as the device for ``device=None`` (None: the CPU); return the one recorded before."""
    before = _DEVICE["device"]
    _DEVICE["device"] = None if dev is None else torch.device(dev)
    return before


def device(dev: str | torch.device | None = None) -> torch.device:
    """``dev`` as a ``torch.device`` if given, else the device :func:`setup` chose (the CPU before)."""
    if dev is not None:
        return torch.device(dev)
    return _DEVICE["device"] if _DEVICE["device"] is not None else torch.device("cpu")


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model lives on (its first parameter's; the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True, needs=()) -> torch.device:
    """Check every ``LDT_*`` variable, the output and artifact folders (writable) and the datasets in
    ``needs`` (prepared) before any work, each a one-line error; then seed everything, keep freed memory,
    set threads and the device, and print them with the absolute folders."""
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
    """A ``tqdm.auto`` progress bar (silenced by ``LDT_PROGRESS=0``); it also lets the automatic
    thread count follow the load (:func:`recheck_threads`)."""
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


def median_seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn()`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
