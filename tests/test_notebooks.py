"""Every notebook runs end to end in the smoke preset, in order, and logs its headline numbers.

The notebooks share one temporary output folder, so later notebooks reuse the
artifacts of earlier ones (as in `make run`); each also rebuilds what it needs
when run alone. Timings are recorded in the run folder's timings and printed
by pytest's ``--durations``; the smoke budget (60 s a notebook) is checked in
the README's measured table, not asserted here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from helpers import notebooks, runs, series

NOTEBOOKS = series.notebook_paths()

# Headline numbers each notebook must log (their bars); checked after it runs.
EXPECTED_METRICS = {
    "01": ["zoo_mean_test_acc", "multiseed_n_networks", "multiseed_zoo_mean_test_acc",
           "multiseed_barrier_unaligned", "multiseed_barrier_aligned"],
    "02": ["recon_acc_drop_pp"],
    "03": ["train_median_acc", "generated_median_acc", "generated_frac_above_95", "cond_r2_identity", "cond_span_pp"],
    "04": ["catdog_recon_psnr_test", "catdog_guidance_chosen", "catdog_real_test_acc",
           "catdog_class_consistency_guided", "catdog_feature_fd_generated", "catdog_feature_fd_real_floor",
           "catdog_feature_fd_recon", "catdog_nn_dist_mean", "catdog_nn_dist_test_ref_mean"],
    "05": [f"eval_{m}_{k}" for m in ("generated", "noise", "soup", "gaussian", "vae_prior", "direct")
           for k in ("mean_acc", "max_iou")]
          + [f"eval_{z}_{m}" for z in ("trajectory", "multiseed")
             for m in ("train_mean_acc", "generated_mean_acc", "generated_max_iou", "generated_frontier_margin",
                       "fresh_mean_acc", "fresh_max_iou")]
          + ["eval_multiseed_finetuned_frontier_margin"],
    "06": ["mnist_gen_bayes_acc", "mnist_gen_class_consistency", "mnist_gen_params", "mnist_gen_guidance_w",
           "mnist_gen_bayes_acc_flow_ode", "mnist_gen_bayes_acc_flow_shortcut", "mnist_gen_qda_acc",
           "mnist_gen_cnn_acc", "fashion_gen_bayes_acc"],
}


@pytest.fixture(scope="module")
def shared_outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("series")


def test_notebooks_exist_and_are_numbered():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers[:1] == ["00"], numbers
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    assert notebooks.dirty_cells(path) == [], f"{path.name} carries outputs; run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_stored_as_jupyterlab_writes_it(path):
    """Opened in JupyterLab 4, a notebook stored any other way is marked modified at once
    (and autosave then writes outputs into it): see helpers/notebooks.py."""
    assert notebooks.format_problems(path) == [], f"{path.name}: run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_parameters_cell(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert "PRESET" in tagged[0].source


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_smoke(path, shared_outputs):
    out = shared_outputs
    run_dir = out / "runs" / "test"
    env = {"LDT_PRESET": "smoke", "LDT_OUTPUT_DIR": str(out), "LDT_RUN_DIR": str(run_dir),
           "LDT_PROGRESS": "0"}
    series.execute_notebook(path, run_dir / path.name, timeout=600, env=env)
    number = path.name[:2]
    expected = EXPECTED_METRICS.get(number, [])
    if expected:
        rows = [r for r in runs.read_metrics(run_dir / "metrics.csv") if r["notebook"] == number]
        logged = {r["name"]: r["value"] for r in rows}
        missing = [m for m in expected if m not in logged]
        assert not missing, f"{path.name} did not log {missing}; logged {sorted(logged)}"
        assert all(r["preset"] == "smoke" for r in rows)
        assert all(math.isfinite(logged[m]) for m in expected), logged
    # No stray return values under cells ([PosixPath(...)] from save_figure, a bare number
    # from log_metric): an execute_result is only shown where a cell means to show a value.
    executed = __import__("nbformat").read(run_dir / path.name, as_version=4)
    stray = [(c.id, o["data"].get("text/plain", "")[:60]) for c in executed.cells if c.cell_type == "code"
             for o in c.outputs if o.output_type == "execute_result"
             and _STRAY.match(o["data"].get("text/plain", ""))]
    assert not stray, f"{path.name}: stray values under cells {stray}"
    # Figures go to the temporary output folder, never the committed figures/.
    assert not any(p.stat().st_mtime > _START for p in (Path(__file__).parents[1] / "figures").glob("*")), \
        "a smoke run wrote into the committed figures/ folder"


_START = __import__("time").time()
_STRAY = __import__("re").compile(r"^\[?(PosixPath|WindowsPath)\(|^-?\d+(\.\d+)?(e-?\d+)?$")


def test_notebook_files_numbers_under_its_own_preset(tmp_path):
    """A notebook whose parameters cell sets a preset other than $LDT_PRESET files its
    metrics, figures and GIFs under its own preset, and shows no stray values."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np\nfrom helpers import animation, config, plots, runs, runtime"),
        nbformat.v4.new_code_cell('PRESET = "smoke"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('cfg = config.get_config("setup", PRESET)\ncfg.show()\n'
                                  'device = runtime.setup(cfg.seed)'),
        nbformat.v4.new_code_cell('runs.log_metric("99", "answer", 42.0)'),
        nbformat.v4.new_code_cell('fig = plots.line_plot({"x": [1, 2, 3]})\nplots.save_figure(fig, "99_line")'),
        nbformat.v4.new_code_cell('gif = animation.write_gif([np.zeros((4, 4, 3), np.uint8)] * 2, "99_anim")'),
    ]
    path = tmp_path / "99_preset.ipynb"
    nbformat.write(nb, path)
    out, run_dir = tmp_path / "out", tmp_path / "out" / "runs" / "r"
    env = {"LDT_PRESET": "default", "LDT_OUTPUT_DIR": str(out), "LDT_RUN_DIR": str(run_dir),
           "LDT_PROGRESS": "0"}
    executed = series.execute_notebook(path, run_dir / path.name, timeout=120, env=env)
    rows = runs.read_metrics(run_dir / "metrics.csv")
    assert [(r["name"], r["preset"]) for r in rows] == [("answer", "smoke")]
    assert (out / "figures" / "smoke" / "99_line.png").exists() and (out / "figures" / "smoke" / "99_anim.gif").exists()
    assert not (out / "figures" / "99_line.png").exists()
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in executed.cells]
    assert texts[2].startswith("NOTE: smoke preset") and "[metric] 99 answer = 42 (smoke)" in texts[3]
    assert not [o for c in executed.cells for o in c.outputs if o.output_type == "execute_result"]


@pytest.mark.notebook
def test_late_notebook_runs_alone_in_an_empty_output_folder(tmp_path):
    """Notebook 05 with nothing before it (the README's promise that every notebook runs
    on its own): in an empty output folder it rebuilds what notebooks 01-03 make (zoos,
    VAEs, the latent and the direct denoisers) through the artifact cache, there, and
    logs its headline numbers."""
    path = next(p for p in NOTEBOOKS if p.name.startswith("05_"))
    out = tmp_path / "alone"
    run_dir, artifacts_dir = out / "runs" / "test", out / "artifacts"
    env = {"LDT_PRESET": "smoke", "LDT_OUTPUT_DIR": str(out), "LDT_ARTIFACTS_DIR": str(artifacts_dir),
           "LDT_RUN_DIR": str(run_dir), "LDT_PROGRESS": "0"}
    assert not out.exists()
    series.execute_notebook(path, run_dir / path.name, timeout=600, env=env)
    rows = [r for r in runs.read_metrics(run_dir / "metrics.csv") if r["notebook"] == "05"]
    logged = {r["name"]: r["value"] for r in rows}
    missing = [m for m in EXPECTED_METRICS["05"] if m not in logged]
    assert not missing, f"{path.name} alone did not log {missing}; logged {sorted(logged)}"
    assert all(math.isfinite(logged[m]) for m in EXPECTED_METRICS["05"]), logged
    assert all(r["preset"] == "smoke" for r in rows)
    kinds = {p.name.rsplit("-", 1)[0] for p in artifacts_dir.glob("*.safetensors")}
    needed = {"zoo", "vae", "weight_diffusion", "direct_diffusion"}
    assert needed <= kinds, f"expected artifacts {sorted(needed)} rebuilt in {artifacts_dir}, found {sorted(kinds)}"


@pytest.mark.notebook
def test_relative_output_folder_is_one_place_for_the_series_and_the_kernels(tmp_path):
    """``LDT_OUTPUT_DIR=<relative> python -m helpers.series --only 00``, started from another folder:
    the run records, artifacts and figures all land under ``<repo>/<relative>``, nothing under notebooks/."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).parents[1]
    rel = f"test-out-{os.getpid()}"
    before = sorted(p.name for p in (repo / "notebooks").iterdir())
    env = {**os.environ, "LDT_OUTPUT_DIR": rel, "PYTHONPATH": str(repo), "LDT_PROGRESS": "0"}
    env.pop("LDT_RUN_DIR", None)
    env.pop("LDT_ARTIFACTS_DIR", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "helpers.series", "--preset", "smoke", "--only", "00"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert f"LDT_OUTPUT_DIR    {repo / rel}" in proc.stdout and "WARNING" not in proc.stderr
        (run,) = (repo / rel / "runs").iterdir()
        assert (run / "00_setup_and_data.ipynb").exists() and (run / "timings.csv").exists()
        assert any((repo / rel / "figures" / "smoke").iterdir())
        assert sorted(p.name for p in (repo / "notebooks").iterdir()) == before and not list(tmp_path.iterdir())
    finally:
        shutil.rmtree(repo / rel, ignore_errors=True)


@pytest.mark.notebook
def test_zoo_copied_over_another_zoos_file_is_rebuilt_by_notebook_01(tmp_path):
    """The many-seed zoo's file copied to the trajectory zoo's name: notebook 01 rebuilds it and
    reports its own settings' numbers."""
    from helpers import weights

    path = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    out = tmp_path / "out"
    env = {"LDT_PRESET": "smoke", "LDT_OUTPUT_DIR": str(out), "LDT_RUN_DIR": str(out / "runs" / "a"),
           "LDT_PROGRESS": "0", "LDT_DATASET": "mnist"}
    series.execute_notebook(path, out / "a.ipynb", timeout=600, env=env)
    os.environ["LDT_OUTPUT_DIR"] = str(out)         # the conftest fixture restores it
    trajectory, multiseed = (weights.zoo_path(weights.zoo_config("smoke", kind)) for kind in ("trajectory", "multiseed"))
    trajectory.write_bytes(multiseed.read_bytes())
    series.execute_notebook(path, out / "b.ipynb", timeout=600, env={**env, "LDT_RUN_DIR": str(out / "runs" / "b")})
    text = (out / "b.ipynb").read_text()
    assert f"warning: artifact {trajectory} was made with other settings" in text and "Rebuilding it" in text
    first, second = (runs.read_metrics(out / "runs" / r / "metrics.csv") for r in ("a", "b"))
    assert [r["name"] for r in second] == [r["name"] for r in first]      # the same numbers, up to thread-count noise
    assert [r["value"] for r in second] == pytest.approx([r["value"] for r in first], abs=0.5)
