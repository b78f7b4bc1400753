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
    """CUDA if available, then Apple's MPS, then the CPU (or ``prefer``/``$LDT_DEVICE``)."""
    prefer = prefer or os.environ.get("LDT_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (``$LDT_NUM_THREADS``, else every core).

    On the idle 2-core reference machine, 2 threads were measured 1.8-2.6x
    faster than 1 for this series' small networks (``benchmarks/bench_threads.py``).
    On a machine busy with other jobs, use 1 (``LDT_NUM_THREADS=1``): threads
    that wait on each other were measured up to 10x slower there.
    """
    if n is None:
        n = int(os.environ.get("LDT_NUM_THREADS", 0)) or (os.cpu_count() or 1)
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

    kwargs.setdefault("disable", os.environ.get("LDT_PROGRESS", "1") == "0")
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
