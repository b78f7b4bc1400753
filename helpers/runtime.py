"""Reproducibility and the machine: seeds, device, CPU threads, progress bars, timers.

Nothing here runs on import; every notebook calls :func:`setup` once at the top::

    device = runtime.setup(seed=cfg.seed)     # seeds, threads, device; prints them
"""

from __future__ import annotations

import os
import platform
import random
import time
from contextlib import contextmanager

import numpy as np
import torch

from .config import env_choice, env_int


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
    from .config import SettingError

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


def setup_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (``$LDT_NUM_THREADS``, else every core).

    On the idle 2-core reference machine, 2 threads were measured 1.8-2.6x
    faster than 1 for this series' small networks (``benchmarks/bench_threads.py``).
    On a machine busy with other jobs, use 1 (``LDT_NUM_THREADS=1``): threads
    that wait on each other were measured up to 10x slower there.
    """
    if n is None:
        n = env_int("LDT_NUM_THREADS", minimum=1) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def setup(seed: int = 0, threads: int | None = None, verbose: bool = True) -> torch.device:
    """Seed everything, set CPU threads and choose the device; print a one-line summary."""
    seed_everything(seed)
    n = setup_threads(threads)
    device = get_device()
    if verbose:
        print(f"seed {seed} | device {device} | torch threads {n} | torch {torch.__version__}")
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

    Set ``LDT_PROGRESS=0`` to silence all bars (the test suite does).
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", env_choice("LDT_PROGRESS", ("0", "1"), default="1") == "0")
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


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
