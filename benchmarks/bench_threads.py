"""How many torch CPU threads? Time the series' typical workloads at 1..N threads.

    python benchmarks/bench_threads.py

Times, in one process, a training step of a small MNIST CNN (batch 256) and of
a residual-MLP denoiser (batch 256, 512-d), for each thread count, and prints
the speed relative to one thread. `helpers.runtime.setup_threads` uses every
core by default; set `LDT_NUM_THREADS` to override.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from torch import nn


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


def _mlp():
    return nn.Sequential(nn.Linear(512, 1024), nn.SiLU(), nn.Linear(1024, 1024), nn.SiLU(),
                         nn.Linear(1024, 512))


def time_step(model, x, y, loss_fn, repeats=20):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for i in range(repeats + 3):
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    torch.manual_seed(0)
    workloads = {
        "cnn train step (batch 256, 28x28)": (_cnn(), torch.randn(256, 1, 28, 28),
                                              torch.randint(0, 10, (256,)), nn.functional.cross_entropy),
        "mlp train step (batch 256, 512-d)": (_mlp(), torch.randn(256, 512), torch.randn(256, 512),
                                              nn.functional.mse_loss),
    }
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    print(f"cores: {os.cpu_count()}  torch {torch.__version__}")
    for name, (model, x, y, loss_fn) in workloads.items():
        base = None
        for n in counts:
            torch.set_num_threads(n)
            sec = time_step(model, x, y, loss_fn)
            base = base or sec
            print(f"{name:<36} threads={n}: {sec * 1e3:7.2f} ms/step  speed x{base / sec:.2f} vs 1 thread")


if __name__ == "__main__":
    main()
