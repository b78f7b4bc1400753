"""How many torch CPU threads, and is the default safe when the machine is busy?

    python benchmarks/bench_threads.py            # idle and loaded, in one run (about 1-2 min)
    python benchmarks/bench_threads.py --rounds 5 --seconds 1

Times training steps of the series' typical networks under several thread
policies, each in a fresh Python process (OpenMP reads its environment when
torch is imported, so a policy must be set before that):

- ``1 thread``: ``torch.set_num_threads(1)``;
- ``2 threads``: every core, OpenMP's default wait policy (GNU OpenMP: spin a while, then sleep);
- with ``--investigate``, the policies tried and rejected: ``2 threads, passive``
  (``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep) and ``2 threads, spin 10k``
  (GNU OpenMP spins 30x shorter before sleeping);
- ``default``: what :func:`helpers.runtime.setup_threads` chooses (one thread per
  core not kept busy by another process at that moment).

Each policy is timed twice: on the machine as it is ("idle") and while this
script keeps one core busy with a spinning process of its own ("loaded"). It
prints ms per step and the two ratios the README quotes: ``default`` against
``1 thread`` under load (bar: at most 1.5x slower) and ``default`` against
``2 threads`` idle (bar: close to 1). Numbers are only meaningful when nothing
else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (environment for the child, threads argument for setup_threads; None = default policy)
POLICIES = {
    "1 thread": ({}, 1),
    "2 threads": ({}, 2),
    "default": ({}, None),
}
# tried while choosing the default (--investigate): waiting threads that sleep (passive) or
# spin 30x shorter; both cost idle speed (passive 1.1-4.4x slower than 2 threads, idle)
INVESTIGATED = {"2 threads, passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
                "2 threads, spin 10k": ({"GOMP_SPINCOUNT": "10000"}, 2)}


def _workloads():
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))
    mlp = nn.Sequential(nn.Linear(512, 1024), nn.SiLU(), nn.Linear(1024, 1024), nn.SiLU(),
                        nn.Linear(1024, 512))
    # the size of notebook 03's latent denoiser in the smoke preset: many tiny ops per step
    tiny = nn.Sequential(nn.Linear(16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                         nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 16))
    ce, mse = nn.functional.cross_entropy, nn.functional.mse_loss
    return {
        "cnn (batch 128, 28x28)": (cnn, torch.randn(128, 1, 28, 28, generator=g),
                                   torch.randint(0, 10, (128,), generator=g), ce),
        "mlp (batch 256, 512-d)": (mlp, torch.randn(256, 512, generator=g),
                                   torch.randn(256, 512, generator=g), mse),
        "tiny mlp (batch 64, 16-d)": (tiny, torch.randn(64, 16, generator=g),
                                      torch.randn(64, 16, generator=g), mse),
    }


def time_steps(model, x, y, loss_fn, seconds: float, min_steps: int = 5) -> float:
    """Median seconds per training step over blocks of steps, for about ``seconds``."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    times, start = [], time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > 10 * seconds:  # a collapsed policy: stop early
            break
    return statistics.median(times)


def child(threads: int | None, seconds: float) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from helpers import runtime

    n = runtime.setup_threads(threads)
    out = {"threads": n, "wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "ms": {}}
    for name, (model, x, y, loss_fn) in _workloads().items():
        torch.manual_seed(0)
        out["ms"][name] = 1e3 * time_steps(model, x, y, loss_fn, seconds)
    print(json.dumps(out))


def run_policy(name: str, seconds: float) -> dict:
    env_extra, threads = {**POLICIES, **INVESTIGATED}[name]
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LDT_NUM_THREADS", "OMP_WAIT_POLICY",
                        "GOMP_SPINCOUNT")}
    env.update(env_extra or {})
    args = [sys.executable, __file__, "--child", str(threads or 0), "--seconds", str(seconds)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"policy {name!r} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.7, help="timing per workload, policy and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per policy (median)")
    parser.add_argument("--investigate", action="store_true", help="also time the policies tried and rejected")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child or None, args.seconds)
        return 0
    if args.investigate:
        POLICIES.update(INVESTIGATED)

    print(f"cores: {os.cpu_count()}  load average now: {os.getloadavg()[0]:.2f}  "
          f"({args.rounds} interleaved rounds per policy, median)")
    results = {}
    for condition in ("idle", "loaded"):
        busy = None
        if condition == "loaded":  # one other process keeps a core busy
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            rounds = {name: [] for name in POLICIES}
            for _ in range(args.rounds):  # interleaved, so a passing disturbance hits every policy
                for name in POLICIES:
                    rounds[name].append(run_policy(name, args.seconds))
            for name, rs in rounds.items():
                r = {"threads": "/".join(sorted({str(x["threads"]) for x in rs})),
                     "wait_policy": rs[0]["wait_policy"],
                     "ms": {w: statistics.median(x["ms"][w] for x in rs) for w in rs[0]["ms"]}}
                results[condition, name] = r
                ms = "  ".join(f"{w}: {v:8.2f} ms" for w, v in r["ms"].items())
                print(f"{condition:<7} {name:<19} (threads {r['threads']}, wait {r['wait_policy']:<7}) {ms}",
                      flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()

    print("\nratios (time / reference time; lower is better):")
    workloads = list(results["idle", "default"]["ms"])
    worst_loaded, worst_idle = 0.0, 0.0
    for w in workloads:
        loaded = results["loaded", "default"]["ms"][w] / results["loaded", "1 thread"]["ms"][w]
        idle = results["idle", "default"]["ms"][w] / results["idle", "2 threads"]["ms"][w]
        speed2 = results["idle", "1 thread"]["ms"][w] / results["idle", "2 threads"]["ms"][w]
        collapse = results["loaded", "2 threads"]["ms"][w] / results["loaded", "1 thread"]["ms"][w]
        worst_loaded, worst_idle = max(worst_loaded, loaded), max(worst_idle, idle)
        print(f"  {w:<27} loaded: default / 1 thread = {loaded:5.2f}x (2 threads, OpenMP default: {collapse:5.2f}x) | "
              f"idle: default / 2 threads = {idle:5.2f}x (2 threads are {speed2:.2f}x faster than 1)")
    print(f"worst: loaded {worst_loaded:.2f}x (bar <= 1.5), idle {worst_idle:.2f}x (bar: close to 1)")
    if os.environ.get("LDT_RUN_DIR"):  # `make run`: into the run's metrics.csv
        sys.path.insert(0, str(ROOT))
        from helpers import runs

        runs.log_metric("bench", "threads_default_vs_1_loaded_worst", worst_loaded, preset="default")
        runs.log_metric("bench", "threads_default_vs_2_idle_worst", worst_idle, preset="default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
