"""Benchmark: training the zoo's CNN the naive way against the in-memory and batched ways, in one process.

    python benchmarks/bench_zoo_training.py                   # 2 epochs, every core
    python benchmarks/bench_zoo_training.py --epochs 1 --threads 2 --models 4
    python benchmarks/bench_zoo_training.py --out /tmp/bench.json

Trains the same CNN (``classifiers.default_spec("mnist")``) on the 60,000 MNIST training images and
measures its test accuracy, four ways:

- **naive**: the original project's pipeline, ``torchvision.datasets.MNIST`` with
  ``Compose([ToTensor(), Normalize(...)])`` and a ``DataLoader`` of batch 64, Adam 1e-3;
- **in memory, same hyper-parameters**: tensors normalised once, index batches, batch 64, Adam 1e-3
  (isolates the data-pipeline saving);
- **zoo way**: what ``weights.build_zoo`` does for the trajectory zoo: batch 128, Adam 3e-3,
  ``--models`` networks trained together by ``classifiers.train_stacked`` (time per network =
  wall time / models);
- **many-seed way, K = 16 and K = 64** (``--many``): K networks, each with its own initialisation and
  data order, stepped together with a one-cycle rate (``FAST_RECIPE``, chosen on the validation
  split; the recipe search is in ``docs/research_notes/01_02_weights.md``).

The C allocator setting (``runtime.keep_freed_memory``) is applied to every side alike
(``--system-allocator`` turns it off). Prints times, speed ratios and accuracies; writes a JSON
result to ``--out`` (default ``$LDT_OUTPUT_DIR/benchmarks/bench_zoo_training.json`` or
``benchmarks/results/``); with ``$LDT_RUN_DIR`` set, logs ``zoo_speedup_vs_naive`` and
``zoo_speedup_k16_vs_naive`` / ``zoo_speedup_k64_vs_naive`` to the run's metrics. Timings on a
shared machine are inflated by other processes; both sides run in one process so they see the
same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CachedImageDataset  # noqa: E402
from helpers import artifacts, classifiers, data, runtime  # noqa: E402


def train_naive(spec, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    """The original project's way: torchvision dataset + per-sample transforms + DataLoader(batch 64)."""
    from torchvision import transforms

    torch.manual_seed(seed)
    tf = transforms.Compose([transforms.ToTensor(),
                             transforms.Normalize(data.MEAN["mnist"], data.STD["mnist"])])
    dataset = CachedImageDataset("mnist", "train", transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    model = classifiers.build_model(spec, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, time.perf_counter() - t0


def _accuracy(model, x, y) -> float:
    """Test accuracy of a trained model, in %."""
    vector = torch.cat([p.detach().flatten() for p in model.parameters()])
    return classifiers.evaluate_vectors(vector, model.spec, x, y).item()


def train_in_memory(spec, epochs: int, seed: int, batch_size: int, lr: float) -> tuple[torch.nn.Module, float]:
    """Tensors in memory, normalised once (the load is timed too), index batches."""
    t0 = time.perf_counter()
    x, y = classifiers.load_split("mnist", "train")
    model = classifiers.build_model(spec, seed=seed)
    classifiers.train_epochs(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr,
                             generator=torch.Generator().manual_seed(seed))
    return model, time.perf_counter() - t0


def train_zoo_way(spec, epochs: int, seed: int, k: int) -> tuple[torch.Tensor, float]:
    """K networks at once, as the zoo is trained; returns their flat vectors and the wall time."""
    t0 = time.perf_counter()
    x, y = classifiers.load_split("mnist", "train")
    params = classifiers.init_stacked(spec, [seed + i for i in range(k)])
    gens = [torch.Generator().manual_seed(1000 + seed + i) for i in range(k)]
    classifiers.train_stacked(params, spec, x, y, epochs=epochs, batch_size=128, lr=3e-3, generators=gens)
    seconds = time.perf_counter() - t0
    vectors = torch.cat([params[n].detach().reshape(k, -1) for n, _ in classifiers.param_shapes(spec)], 1)
    return vectors, seconds


# The many-seed way's recipe, chosen on the validation split (see the module docstring).
FAST_RECIPE = {"epochs": 0.75, "batch_size": 128, "lr": 2e-2, "lr_schedule": "linear", "warmup": 0.05}


def train_many(spec, seed: int, k: int, recipe: dict = FAST_RECIPE) -> tuple[torch.Tensor, float]:
    """K networks, own seeds and data orders, one batched computation; (vectors (K, D), wall time)."""
    t0 = time.perf_counter()
    x, y = classifiers.load_split("mnist", "train")
    params = classifiers.init_stacked(spec, [seed + i for i in range(k)])
    gens = [torch.Generator().manual_seed(1000 + seed + i) for i in range(k)]
    classifiers.train_stacked(params, spec, x, y, generators=gens, **recipe)
    seconds = time.perf_counter() - t0
    vectors = torch.cat([params[n].detach().reshape(k, -1) for n, _ in classifiers.param_shapes(spec)], 1)
    return vectors, seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: every core)")
    ap.add_argument("--models", type=int, default=4, help="networks trained together in the zoo way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--many", type=str, default="16,64",
                    help="comma-separated K for the many-seed way ('' to skip)")
    ap.add_argument("--system-allocator", action="store_true",
                    help="leave the C allocator as it is (no runtime.keep_freed_memory), for comparison")
    ap.add_argument("--skip-naive", action="store_true", help="only time the fast ways")
    ap.add_argument("--out", type=str, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    allocator = False if args.system_allocator else runtime.keep_freed_memory()  # as runtime.setup does
    args.threads = runtime.setup_threads(args.threads)
    spec = classifiers.default_spec("mnist")
    x_test, y_test = classifiers.load_split("mnist", "test")
    print(f"CNN {spec} ({classifiers.count_params(spec)} parameters), {args.epochs} epochs, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"allocator keeps freed memory: {allocator}")
    result = {"epochs": args.epochs, "threads": args.threads, "models": args.models,
              "allocator_keeps_freed_memory": allocator,
              "params": classifiers.count_params(spec), "load_average_start": os.getloadavg()[0]}

    if not args.skip_naive:
        model, t = train_naive(spec, args.epochs, args.seed)
        acc = _accuracy(model, x_test, y_test)
        result["naive"] = {"seconds": t, "test_acc": acc}
        print(f"naive DataLoader, batch 64      : {t:7.1f} s   test acc {acc:.2f} %")

    model, t = train_in_memory(spec, args.epochs, args.seed, 64, 1e-3)
    acc = _accuracy(model, x_test, y_test)
    result["in_memory_b64"] = {"seconds": t, "test_acc": acc}
    print(f"in memory, batch 64 (same hp)   : {t:7.1f} s   test acc {acc:.2f} %")

    model, t = train_in_memory(spec, args.epochs, args.seed, 128, 3e-3)
    acc = _accuracy(model, x_test, y_test)
    result["in_memory_b128"] = {"seconds": t, "test_acc": acc}
    print(f"in memory, batch 128, lr 3e-3   : {t:7.1f} s   test acc {acc:.2f} %")

    vectors, t = train_zoo_way(spec, args.epochs, args.seed, args.models)
    accs = classifiers.evaluate_vectors(vectors, spec, x_test, y_test)
    result["zoo_way"] = {"seconds": t, "seconds_per_model": t / args.models,
                         "test_acc_mean": float(accs.mean()), "test_acc_min": float(accs.min())}
    print(f"zoo way, {args.models} together (per net): {t / args.models:7.1f} s   "
          f"test acc mean {accs.mean():.2f} %, min {accs.min():.2f} %")
    for k in [int(v) for v in args.many.split(",") if v.strip()]:
        vectors, t = train_many(spec, args.seed, k)
        accs = classifiers.evaluate_vectors(vectors, spec, x_test, y_test)
        result[f"many_k{k}"] = {"seconds": t, "seconds_per_model": t / k, "recipe": FAST_RECIPE,
                                "test_acc_mean": float(accs.mean()), "test_acc_min": float(accs.min())}
        print(f"many-seed way, K={k:<3} (per net): {t / k:7.2f} s   "
              f"test acc mean {accs.mean():.2f} %, min {accs.min():.2f} %")
    result["load_average_end"] = os.getloadavg()[0]

    if "naive" in result:
        naive = result["naive"]["seconds"]
        result["speedup_in_memory_same_hp"] = naive / result["in_memory_b64"]["seconds"]
        result["speedup_in_memory_b128"] = naive / result["in_memory_b128"]["seconds"]
        result["zoo_speedup_vs_naive"] = naive / result["zoo_way"]["seconds_per_model"]
        print(f"speed-up vs naive: in memory same hp {result['speedup_in_memory_same_hp']:.1f}x, "
              f"batch 128 {result['speedup_in_memory_b128']:.1f}x, "
              f"zoo way per network {result['zoo_speedup_vs_naive']:.1f}x")
        for key in [k for k in result if k.startswith("many_k")]:
            many = result[key]
            many["speedup_vs_naive"] = naive / many["seconds_per_model"]
            many["equal_accuracy"] = many["test_acc_mean"] >= result["naive"]["test_acc"]
            print(f"  K={key[6:]}: {many['speedup_vs_naive']:.1f}x per network vs naive; mean test acc "
                  f"{many['test_acc_mean']:.2f} % vs naive {result['naive']['test_acc']:.2f} % "
                  f"({'equal or better' if many['equal_accuracy'] else 'LOWER: not at equal accuracy'})")
        if os.environ.get("LDT_RUN_DIR"):
            from helpers import runs
            runs.log_metric("01", "zoo_speedup_vs_naive", result["zoo_speedup_vs_naive"])
            for key in [k for k in result if k.startswith("many_k")]:
                runs.log_metric("01", f"zoo_speedup_{key[5:]}_vs_naive", result[key]["speedup_vs_naive"])
                runs.log_metric("01", f"zoo_{key[5:]}_test_acc_mean", result[key]["test_acc_mean"])
            runs.log_metric("01", "zoo_naive_test_acc", result["naive"]["test_acc"])

    if args.out:
        out = Path(args.out)
    else:
        root = Path(os.environ["LDT_OUTPUT_DIR"]) if os.environ.get("LDT_OUTPUT_DIR") \
            else Path(__file__).resolve().parent / "results"
        out = root / "benchmarks" / "bench_zoo_training.json" if os.environ.get("LDT_OUTPUT_DIR") \
            else root / "bench_zoo_training.json"
    print(f"wrote {artifacts.write_json(out, result)}")
    return result


if __name__ == "__main__":
    main()
