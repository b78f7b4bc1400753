"""Reproducibility and the machine: seeds, device, CPU threads, progress bars, timers.

Nothing here runs on import; every notebook calls :func:`setup` once at the top::

    device = runtime.setup(seed=cfg.seed)     # seeds, allocator, threads, device; prints them

:func:`setup` also records the device it chose; :func:`device` returns it, and every
helper that trains or samples takes ``device=None`` meaning that one. Models and
batches live there; random numbers are drawn from seeded CPU generators and then
moved, so a run draws the same noise on any device.
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

from .config import SettingError, env_choice, env_int


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a ``torch.Generator`` seeded the same way.

    Pass the returned generator to samplers for randomness that does not depend
    on what else ran before in the kernel.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA if available, then Apple's MPS, then the CPU (or ``prefer``/``$LDT_DEVICE``).

    A requested device must exist: ``LDT_DEVICE=cuda`` on a machine without
    CUDA is an error (:class:`helpers.config.SettingError`), not a silent CPU run.
    """
    if prefer:
        return check_device(prefer, "device")
    if os.environ.get("LDT_DEVICE", "").strip():
        return check_device(os.environ["LDT_DEVICE"].strip(), "LDT_DEVICE")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(name: str, what: str = "device") -> torch.device:
    """``torch.device(name)`` if it is cpu, cuda, cuda:N or mps and present on this machine."""
    accepted = "cpu" + ("".join(f", cuda:{i}" for i in range(torch.cuda.device_count()))
                        if torch.cuda.is_available() else "")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        accepted += ", mps"
    head = f"{what}={name!r} is not accepted"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise SettingError(f"{head}: expected cpu, cuda, cuda:N or mps (available here: {accepted})") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise SettingError(f"{head}: this CUDA device is not available here "
                           f"(available here: {accepted})")
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise SettingError(f"{head}: Apple's MPS is not available here (available here: {accepted})")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SettingError(f"{head}: expected cpu, cuda, cuda:N or mps (available here: {accepted})")
    return device


def busy_cores(samples: int = 3, interval: float = 0.005) -> int:
    """Cores kept busy by other processes right now: the fewest runnable tasks seen in
    ``samples`` reads of ``/proc/stat`` (``procs_running``, this process included), minus
    this process. 0 where ``/proc`` does not exist."""
    counts = []
    for i in range(samples):
        try:
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("procs_running"):
                    counts.append(int(line.split()[1]))
        except (OSError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts) - 1) if counts else 0


def choose_threads() -> tuple[int, str]:
    """The default number of torch threads for the load now, and why: one per core that
    other processes are not keeping busy (see :func:`setup_threads`)."""
    cores = os.cpu_count() or 1
    if cores == 1:
        return 1, "one core"
    busy = busy_cores()
    n = max(1, cores - busy)
    return n, (f"{cores} cores, {busy} busy with other processes" if busy else f"{cores} idle cores")


def setup_threads(n: int | None = None, verbose: bool = False) -> int:
    """Set torch's intra-op CPU threads: ``n``, else ``$LDT_NUM_THREADS``, else a safe default.

    The default (measured with ``benchmarks/bench_threads.py``, see the README):
    torch's OpenMP threads wait for each other at the end of every operation, and
    a waiting thread spins for a while. If another process keeps a core busy,
    that spinning takes CPU from the thread it waits for, and training on every
    core collapsed (a 300-step cell went from 1.5-4.5 s to 73-130 s). So the
    default is one thread per core that other processes are not keeping busy
    (:func:`busy_cores`), chosen here and re-chosen while training loops run
    (:func:`recheck_threads`, called by :func:`progress`). Letting waiting
    threads sleep (``OMP_WAIT_POLICY=PASSIVE``) was measured too and rejected:
    it made idle training 1.1-4.4x slower.
    """
    global _THREADS
    why = "argument"
    if n is None:
        n, why = env_int("LDT_NUM_THREADS", minimum=1), "LDT_NUM_THREADS"
    auto = not n
    if auto:
        n, why = choose_threads()
    torch.set_num_threads(n)
    _THREADS.update(auto=auto, n=n, why=why, checked=time.monotonic())
    if verbose:
        print(f"torch threads: {n} ({why})")
    return n


# What setup_threads chose, so that training loops can re-check the load.
_THREADS = {"auto": False, "n": 0, "why": "", "checked": 0.0}


def recheck_threads(min_interval: float = 3.0) -> int:
    """While a loop runs, re-choose the default thread count for the load *now* (a
    second kernel or a build may have started, or stopped, since :func:`setup`).

    Only when the count came from the default policy and nobody has set another
    since; at most every ``min_interval`` seconds (a check costs about 10 ms).
    :func:`progress` calls it, so every loop of the series does. Returns the
    thread count in use.
    """
    current = torch.get_num_threads()
    if not _THREADS["auto"] or current != _THREADS["n"]:
        return current
    if time.monotonic() - _THREADS["checked"] < min_interval:
        return current
    n, why = choose_threads()
    if n != current:
        torch.set_num_threads(n)
    _THREADS.update(n=n, why=why, checked=time.monotonic())
    return n


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR = {"tuned": None}


def keep_freed_memory(mmap_threshold_mb: int = 32) -> bool:
    """Let the C allocator keep freed memory for the next tensor instead of returning it
    to the operating system; True if it took effect (glibc only; elsewhere nothing changes).

    A training step allocates its activations and gradients afresh, and glibc serves
    blocks above its mmap threshold (128 KiB at start, raised as blocks are freed) from
    new pages and trims the heap above 128 KiB of free space: every step then pays
    page faults, the kernel zeroing each new page. Measured on the 2-core machine, the
    first 0.1 epoch of 64 stacked MNIST CNNs in a fresh process
    (:func:`helpers.classifiers.train_stacked`): 1.5-2.1 million page faults and 1.6-2.1 ms
    per network-step before, 46,000 and 1.0-1.1 ms after; once glibc's own thresholds have
    grown, both run at 0.75-0.85 ms. Peak memory is the same. Here blocks up to
    ``mmap_threshold_mb`` (glibc's ceiling: 32) come from the heap, and the heap is never
    trimmed. The computation does not change, only where its memory comes from (an
    autoencoder epoch gave bit-identical weights with and without it). PyTorch's CPU
    tuning guide recommends jemalloc or tcmalloc for the same reason; this gets the effect
    without preloading a library. The first call decides; later calls return its result.
    """
    if _ALLOCATOR["tuned"] is not None:
        return _ALLOCATOR["tuned"]
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        import ctypes
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) << 20)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
        except (OSError, AttributeError):
            ok = False
    _ALLOCATOR["tuned"] = ok
    return ok


# The device setup() chose (None before setup: the CPU).
_DEVICE: dict[str, torch.device | None] = {"device": None}


def set_device(dev: str | torch.device | None) -> torch.device | None:
    """Record ``dev`` as the device helpers use when given ``device=None`` (None: back to the CPU);
    return the one recorded before. :func:`setup` calls it; tests use it to choose a device."""
    before = _DEVICE["device"]
    _DEVICE["device"] = None if dev is None else torch.device(dev)
    return before


def device(dev: str | torch.device | None = None) -> torch.device:
    """``dev`` as a ``torch.device`` if given, else the device :func:`setup` chose (the CPU before
    any setup). Every helper that trains or samples resolves its ``device=None`` argument here."""
    if dev is not None:
        return torch.device(dev)
    return _DEVICE["device"] if _DEVICE["device"] is not None else torch.device("cpu")


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model lives on (its first parameter's; the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True) -> torch.device:
    """Seed everything, keep freed memory for reuse (:func:`keep_freed_memory`), set CPU
    threads, choose the device and record it (see :func:`device`); print a one-line summary."""
    seed_everything(seed)
    keep_freed_memory()
    n = setup_threads(threads)
    device = get_device()
    set_device(device)
    if verbose:
        print(f"seed {seed} | device {device} | torch threads {n} ({_THREADS['why']}) | torch {torch.__version__}")
    return device


def environment_report() -> dict[str, str]:
    """Versions of Python and the main packages, and the hardware, as a dict."""
    import importlib.metadata as md

    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu cores": str(os.cpu_count()),
        "device": str(get_device()),
    }
    for pkg in ("torch", "torchvision", "numpy", "matplotlib", "scikit-learn", "imageio",
                "ipywidgets", "safetensors", "jupyterlab"):
        try:
            report[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            report[pkg] = "not installed"
    return report


def progress(iterable=None, **kwargs):
    """A ``tqdm.auto`` progress bar (a widget in Jupyter, text elsewhere).

    Set ``LDT_PROGRESS=0`` to silence all bars (the test suite does). Every loop
    of the series runs through one, so it is also where the default thread count
    follows the load (:func:`recheck_threads`, at most every few seconds).
    """
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
    """Median wall time of ``repeats`` calls of ``fn()``, after one untimed warm-up call
    (the benchmarks' timing rule)."""
    fn()  # warm-up: first-call allocations and lazy initialisation are not timed
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
