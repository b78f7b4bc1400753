"""Execute the notebooks in order: what `make run` and the notebook tests do.

    python -m helpers.series                     # every notebook, preset from $LDT_PRESET or "default"
    python -m helpers.series --preset smoke --only 01 02
    python -m helpers.series --dataset cifar10   # the weight story on CIFAR-10 (else $LDT_DATASET or "mnist")

Each run gets a folder ``runs/<timestamp>/`` (or ``--run-dir``) for the executed notebooks, ``metrics.csv``
and ``timings.csv``; kernels get every folder as an absolute path and talk over IPC sockets (no TCP port).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import config as _config
from . import runs as _runs


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks ``notebooks/NN_*.ipynb`` in order (optionally only some numbers)."""
    paths = sorted((_config.repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.zfill(2) for o in only}
        paths = [p for p in paths if p.name[:2] in wanted]
        missing = wanted - {p.name[:2] for p in paths}
        if missing:
            raise SystemExit(f"no notebook numbered {', '.join(sorted(missing))} in notebooks/")
    return paths


def execute_notebook(path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                     timeout: int = 3600, env: dict[str, str] | None = None):
    """Execute a notebook in its own folder (kernel over IPC, inheriting ``env``); return it. The executed
    copy is written to ``out_path`` even when a cell fails, then the error is re-raised."""
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    sockets = tempfile.mkdtemp(prefix="ldt-kernel-")
    try:
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", config=ipc,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:
            if out_path is not None:
                Path(out_path).parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, out_path)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def run_series(preset: str | None = None, only: list[str] | None = None,
               run_dir: Path | None = None, dataset: str | None = None) -> Path:
    """Execute the notebooks in order into a run folder (``LDT_*`` settings checked first); return the folder."""
    preset = _config.current_preset(preset)
    dataset = _config.current_dataset(dataset)
    env = _config.check_environment()
    run_dir = _config.check_writable(_config.absolute(run_dir), "--run-dir") if run_dir else _config.new_run_dir()
    folders = {"LDT_RUN_DIR": run_dir, "LDT_OUTPUT_DIR": env["output"], "LDT_ARTIFACTS_DIR": env["artifacts"],
               "LDT_DATA_DIR": env["data"]}
    kernel_env = {"LDT_PRESET": preset, "LDT_DATASET": dataset, **{k: str(v) for k, v in folders.items()}}
    print(f"preset {preset} | dataset {dataset}\n" + "\n".join(f"  {k:<17} {v}" for k, v in folders.items()))
    timings, failed = [], None
    total_start = time.perf_counter()
    for path in notebook_paths(only):
        print(f"-> {path.name} ...", flush=True)
        start = time.perf_counter()
        try:
            execute_notebook(path, run_dir / path.name, env=kernel_env)
            status = "ok"
        except Exception as exc:  # report which notebook failed, then stop
            status, failed = f"FAILED: {type(exc).__name__}", (path.name, exc)
        seconds = time.perf_counter() - start
        timings.append((path.name, seconds, status))
        _runs.log_timing(run_dir, path.name, seconds, status, preset)
        print(f"   {path.name}: {seconds:.1f} s {status}", flush=True)
        if failed:
            break
    total = time.perf_counter() - total_start
    _runs.log_timing(run_dir, "TOTAL", total, "failed" if failed else "ok", preset)
    print_summary(run_dir, timings, total)
    if failed:
        name, exc = failed
        raise SystemExit(f"{name} failed; the executed copy with the error is in {run_dir / name}\n{exc}")
    return run_dir


def print_summary(run_dir: Path, timings, total: float) -> None:
    """Print the timings and every metric of the run."""
    print("\n=== summary ===")
    for name, sec, status in timings:
        print(f"{name:<45} {sec:8.1f} s  {status}")
    print(f"{'total':<45} {total:8.1f} s ({total / 60:.1f} min)")
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        print("\nmetrics:")
        for row in _runs.read_metrics(metrics):
            print(f"  {row['notebook']:>3} {row['name']:<40} {row['value']:10.4g}  ({row['preset']})")
    print(f"\nexecuted notebooks, metrics.csv and timings.csv: {run_dir}\nfigures: {_config.figures_dir()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.series", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=_config.PRESET_NAMES, default=None,
                        help="preset (default: $LDT_PRESET or 'default')")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 01 02")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/<timestamp>; relative: from the repository root)")
    parser.add_argument("--dataset", default=None, help=f"the weight story's dataset, one of "
                        f"{', '.join(_config.DATASET_NAMES)} (default: $LDT_DATASET or 'mnist')")
    args = parser.parse_args(argv)
    try:
        run_series(args.preset, args.only, args.run_dir, dataset=args.dataset)
    except _config.SettingError as exc:  # a bad LDT_* variable or folder: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
