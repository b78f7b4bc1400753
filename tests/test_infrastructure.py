"""Config, artifacts, runs, plots and animation: the ground every notebook stands on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import animation, artifacts, config, notebooks, plots, runs, runtime


@pytest.fixture(autouse=True)
def _no_active_preset(monkeypatch):
    """Each test starts with no preset recorded by an earlier get_config call."""
    monkeypatch.setattr(config, "_ACTIVE_PRESET", None)


# --- config -----------------------------------------------------------------

def test_every_section_defines_every_preset_with_the_same_keys():
    for name, block in config.SECTIONS.items():
        assert set(block) == set(config.PRESET_NAMES), name
        keys = {p: set(block[p]) for p in config.PRESET_NAMES}
        assert keys["smoke"] == keys["default"] == keys["full"], f"{name}: {keys}"


def test_preset_resolution_and_errors(monkeypatch):
    monkeypatch.delenv("LDT_PRESET", raising=False)
    assert config.current_preset() == "default"
    monkeypatch.setenv("LDT_PRESET", "smoke")
    assert config.current_preset() == "smoke"
    assert config.current_preset("full") == "full"
    with pytest.raises(ValueError, match="expected one of smoke, default, full"):
        config.current_preset("fast")


def test_get_config_overrides_and_rejects_typos():
    cfg = config.get_config("zoo", "smoke", seed=7)
    assert cfg.seed == 7 and cfg.preset == "smoke" and cfg.section == "zoo"
    # the preset data itself is not mutated by an override
    assert config.get_config("zoo", "smoke").seed == config.ZOO["smoke"]["seed"] != 7
    with pytest.raises(KeyError, match="unknown setting"):
        config.get_config("zoo", "smoke", sede=1)
    with pytest.raises(AttributeError, match="has no setting 'nope'"):
        _ = cfg.nope


def test_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LDT_OUTPUT_DIR", str(tmp_path))
    assert config.figures_dir() == tmp_path / "figures"
    assert config.artifacts_dir() == tmp_path / "artifacts"
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path / "a2"))
    assert config.artifacts_dir() == tmp_path / "a2"


def test_import_has_no_side_effects():
    code = ("import torch; n = torch.get_num_threads(); s = torch.initial_seed();"
            "import matplotlib as mpl; r = dict(mpl.rcParams);"
            "import helpers, importlib, pkgutil;"
            "[importlib.import_module('helpers.' + m.name) for m in pkgutil.iter_modules(helpers.__path__)];"
            "assert torch.get_num_threads() == n and torch.initial_seed() == s;"
            "assert dict(mpl.rcParams) == r; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def _helpers_imports() -> dict[str, set[str]]:
    """``{module: {sibling modules it imports, at any level of the file}}`` for every helpers module."""
    import ast
    from pathlib import Path

    graph = {}
    for path in sorted(Path(config.repo_root(), "helpers").glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("helpers")):
                base = (node.module or "").split(".")[-1] if node.module not in (None, "helpers") else ""
                deps |= {base} if base else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
        graph[path.stem] = deps - {path.stem, "__init__"}
    return graph


def test_helpers_have_no_import_cycle_at_any_depth():
    """Every import counts, also one inside a function: the modules form layers."""
    graph = _helpers_imports()
    assert graph["config"] == set() and graph["runtime"] == {"config"}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(path + [module])}"
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_package_docstring_names_every_module_in_its_group():
    import re

    import helpers

    groups = dict(re.findall(r"^- ([^:\n]+): (.*?)(?=^- |\Z)", helpers.__doc__, re.S | re.M))
    assert list(groups) == ["shared core", "weight story (notebooks 01-03, 05)",
                            "image story (notebooks 04, 06)", "infrastructure"]
    named = sorted(m for text in groups.values() for m in re.findall(r"``(\w+)``", text))
    assert named == sorted(p.stem for p in (config.repo_root() / "helpers").glob("*.py") if p.stem != "__init__")


def test_readme_module_table_lists_every_module_in_the_docstrings_groups():
    """The README's package table: the same modules, under the same four groups, as helpers/__init__.py."""
    import re

    import helpers

    readme = (config.repo_root() / "README.md").read_text()
    table = readme.split("## The `helpers` package", 1)[1].split("\n## ", 1)[0]
    groups, current = {}, None
    for line in table.splitlines():
        head = re.match(r"\| \*\*([^*]+)\*\* \|", line)
        row = re.match(r"\| `(\w+)` \|", line)
        if head:
            current = head.group(1)
            groups[current] = []
        elif row:
            groups[current].append(row.group(1))
    doc = dict(re.findall(r"^- ([^:\n]+): (.*?)(?=^- |\Z)", helpers.__doc__, re.S | re.M))
    assert [g.split(" (")[0] for g in doc] == list(groups)
    for (name, text), modules in zip(doc.items(), groups.values()):
        assert sorted(modules) == sorted(re.findall(r"``(\w+)``", text)), name


# --- runtime ------------------------------------------------------------------

def test_seed_everything_is_deterministic():
    g1 = runtime.seed_everything(3)
    a = torch.randn(4), torch.randn(4, generator=g1), np.random.rand(2)
    g2 = runtime.seed_everything(3)
    b = torch.randn(4), torch.randn(4, generator=g2), np.random.rand(2)
    for x, y in zip(a, b):
        assert np.allclose(np.asarray(x), np.asarray(y))


# --- artifacts ----------------------------------------------------------------

def test_config_key_is_order_independent_and_sensitive():
    assert artifacts.config_key({"a": 1, "b": 2}) == artifacts.config_key({"b": 2, "a": 1})
    assert artifacts.config_key({"a": 1}) != artifacts.config_key({"a": 2})


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    with artifacts.atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o044, "atomic writes must not leave files private (0600)"


def test_save_load_tensors_round_trip_and_errors(tmp_path):
    path = tmp_path / "t.safetensors"
    artifacts.save_tensors(path, {"w": torch.arange(6.0).reshape(2, 3)}, {"spec": {"arch": "cnn"}, "n": 3})
    tensors, meta = artifacts.load_tensors(path)
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3))
    assert meta == {"spec": {"arch": "cnn"}, "n": 3}
    with pytest.raises(artifacts.ArtifactError, match="not found.*run notebook 01"):
        artifacts.load_tensors(tmp_path / "missing.safetensors", hint="run notebook 01")
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(artifacts.ArtifactError, match="corrupted"):
        artifacts.load_tensors(path)


def test_cached_builds_once_and_rebuilds_corrupted(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return torch.ones(3)

    save = lambda obj, p: artifacts.save_tensors(p, {"x": obj})
    load = lambda p: artifacts.load_tensors(p)[0]["x"]
    cfg = {"seed": 0}
    artifacts.cached("thing", cfg, build, save, load, verbose=False)
    artifacts.cached("thing", cfg, build, save, load, verbose=False)
    assert len(calls) == 1
    artifacts.artifact_path("thing", cfg).write_bytes(b"garbage")
    out = artifacts.cached("thing", cfg, build, save, load, verbose=False)
    assert len(calls) == 2 and torch.equal(out, torch.ones(3))
    artifacts.cached("thing", {"seed": 1}, build, save, load, verbose=False)
    assert len(calls) == 3


# --- runs ---------------------------------------------------------------------

def test_log_metric_writes_long_format(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("LDT_PRESET", "smoke")
    runs.log_metric("01", "zoo_mean_test_acc", 97.5, verbose=False)
    runs.log_metric("02", "recon_acc_drop_pp", 0.25, verbose=False)
    text = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert text[0] == "notebook,name,value,preset"
    rows = runs.read_metrics(tmp_path / "run" / "metrics.csv")
    assert [(r["notebook"], r["name"], r["value"], r["preset"]) for r in rows] == [
        ("01", "zoo_mean_test_acc", 97.5, "smoke"), ("02", "recon_acc_drop_pp", 0.25, "smoke")]


# --- plots and animation ------------------------------------------------------

def _figure(seed=0):
    import matplotlib
    matplotlib.use("Agg")
    rng = np.random.default_rng(seed)
    return plots.line_plot({"loss": rng.random(10).tolist(), "ema": rng.random(10).tolist()})


def test_save_figure_writes_png_and_pdf_with_stable_bytes(tmp_path):
    a = plots.save_figure(_figure(), "fig", directory=tmp_path / "a")
    b = plots.save_figure(_figure(), "fig", directory=tmp_path / "b")
    assert [p.suffix for p in a] == [".png", ".pdf"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    assert a[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and a[1].read_bytes()[:5] == b"%PDF-"


def test_save_figure_defaults_to_output_dir_not_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_OUTPUT_DIR", str(tmp_path))
    (path, _) = plots.save_figure(_figure(), "x")
    assert path == tmp_path / "figures" / "x.png"


def test_image_grid_accepts_nchw_and_nhwc():
    import matplotlib
    matplotlib.use("Agg")
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    assert plots.to_numpy_images(x).shape == (6, 8, 8, 3)
    assert plots.to_numpy_images(x.permute(0, 2, 3, 1).numpy()).shape == (6, 8, 8, 3)
    with pytest.raises(ValueError, match="expected images"):
        plots.to_numpy_images(np.zeros((2, 2)))
    assert plots.image_grid(x, nrow=3) is not None


def test_gif_has_every_frame_and_slider_shows_them(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((10, 12, 3), i * 40, np.uint8) for i in range(6)]
    path = animation.write_gif(frames, "run", directory=tmp_path)
    assert iio.improps(path, index=None).shape[0] == 6
    s = animation.frame_slider(frames, [f"t = {i}" for i in range(6)])
    first = s.image.value
    s.slider.value = 4
    assert s.label.value == "<b>t = 4</b>" and s.image.value != first
    with pytest.raises(ValueError, match="6 frames but 2 captions"):
        animation.frame_slider(frames, ["a", "b"])
    with pytest.raises(ValueError, match="one shape"):
        animation.write_gif(frames + [np.zeros((3, 3, 3), np.uint8)], "bad", directory=tmp_path)


def test_load_state_names_the_mismatched_parameter(tmp_path):
    model = torch.nn.Linear(4, 3)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    fresh = artifacts.load_state(torch.nn.Linear(4, 3), tensors, tmp_path / "m", prefix="model.")
    assert torch.equal(fresh.weight, model.weight)
    tensors["model.weight"] = torch.zeros(3, 5)
    with pytest.raises(artifacts.ArtifactError,
                       match=r"parameter 'weight' expected shape \(3, 4\), found \(3, 5\)"):
        artifacts.load_state(torch.nn.Linear(4, 3), tensors, tmp_path / "m", prefix="model.")
    with pytest.raises(artifacts.ArtifactError, match="parameter 'bias' expected shape"):
        artifacts.load_state(torch.nn.Linear(4, 3), {"model.weight": model.weight}, tmp_path / "m",
                             prefix="model.")


# --- the preset a notebook runs in, quiet cells, notebook format -----------

def test_metrics_are_filed_under_the_notebooks_preset_once_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("LDT_PRESET", "smoke")
    runs.log_metric("01", "a", 1.0, verbose=False)
    assert runs.read_metrics(tmp_path / "run" / "metrics.csv")[0]["preset"] == "smoke"
    config.get_config("zoo", "default")  # what a parameters cell with PRESET = "default" does
    assert runs.log_metric("01", "a", 2.0, verbose=False) is None  # nothing echoed under a cell
    runs.log_metric("01", "b", 3.0, verbose=False)
    runs.log_metric("01", "a", 4.0, verbose=False)  # a re-run cell replaces its row
    rows = runs.read_metrics(tmp_path / "run" / "metrics.csv")
    assert [(r["name"], r["value"], r["preset"]) for r in rows] == [("a", 4.0, "default"), ("b", 3.0, "default")]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.csv"]  # no temp files left
    runs.log_metric("01", "b", 5.0, preset="full", verbose=False)
    assert runs.read_metrics(tmp_path / "run" / "metrics.csv")[1]["preset"] == "full"


def test_figures_of_other_presets_go_to_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("LDT_PRESET", "smoke")
    frames = [np.full((6, 8, 3), 40 * i, np.uint8) for i in range(3)]
    assert plots.save_figure(_figure(), "f")[0] == tmp_path / "figures" / "smoke" / "f.png"
    assert animation.write_gif(frames, "g") == tmp_path / "figures" / "smoke" / "g.gif"
    config.get_config("zoo", "default")
    assert plots.save_figure(_figure(), "f")[0] == tmp_path / "figures" / "f.png"
    assert animation.write_gif(frames, "g") == tmp_path / "figures" / "g.gif"
    config.get_config("zoo", "full")
    assert plots.save_figure(_figure(), "f")[1] == tmp_path / "figures" / "full" / "f.pdf"


def test_save_figure_result_displays_nothing_in_a_notebook(tmp_path):
    from IPython.core.formatters import DisplayFormatter

    paths = plots.save_figure(_figure(), "f", directory=tmp_path)
    assert paths == [tmp_path / "f.png", tmp_path / "f.pdf"]
    assert DisplayFormatter().format(paths) == ({}, {})
    assert DisplayFormatter().format(list(paths))[0]["text/plain"].startswith("[PosixPath(")


def test_smoke_config_says_its_numbers_only_prove_the_code_runs(capsys):
    config.get_config("zoo", "smoke").show()
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("NOTE: smoke preset") and "only proves the code runs" in first
    config.get_config("zoo", "default").show()
    assert "NOTE" not in capsys.readouterr().out


def test_slider_without_captions_shows_none_and_spans_the_width():
    frames = [np.full((10, 12, 3), i * 40, np.uint8) for i in range(4)]
    s = animation.frame_slider(frames)
    assert s.label not in s.widget.children and s.label.value == ""
    assert s.slider.layout.width == "100%" and s.image.layout.width == "100%"
    s.slider.value = 3
    assert s.image.value == animation._png_bytes(frames[3])


def test_frames_grid_draws_frames_at_their_own_size():
    import matplotlib
    matplotlib.use("Agg")
    frames = [np.zeros((208, 512, 3), np.uint8)] * 51
    fig = animation.frames_grid(frames, n=6, titles=False)
    # 512 px rendered at 80 dpi = 6.4 in per frame; two fit in 13 in, so 3 rows of 2
    assert len(fig.axes) == 6 and abs(fig.get_size_inches()[0] - 12.8) < 1e-6
    assert all(ax.get_title() == "" for ax in fig.axes)


def _old_style_notebook(path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1 + 1")]
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[1].execution_count = 1
    nb.cells[1].metadata["scrolled"] = True
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    nbformat.write(nb, path)
    return nb


def test_strip_stores_notebooks_as_jupyterlab_writes_them(tmp_path):
    path = tmp_path / "n.ipynb"
    nb = _old_style_notebook(path)
    problems = notebooks.format_problems(path)
    assert any("carry outputs" in p for p in problems) and any("kernelspec expected" in p for p in problems)
    assert notebooks.strip(path) is True
    assert notebooks.format_problems(path) == [] and notebooks.dirty_cells(path) == []
    text = path.read_text()
    assert text.endswith("}\n") and '\n "metadata": {\n  "kernelspec": {\n   "display_name": "Python 3 (ipykernel)"' in text
    stored = json.loads(text)
    assert [c["id"] for c in stored["cells"]] == [c.id for c in nb.cells]  # ids kept
    assert stored["metadata"]["language_info"]["version"] == platform.python_version()
    assert "scrolled" not in stored["cells"][1]["metadata"]
    assert notebooks.strip(path) is False  # idempotent
    assert notebooks.main(["check", str(path)]) == 0


def test_make_lab_git_filter_keeps_outputs_out_of_commits(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)
    git("init", "-q")
    git("config", "user.email", "t@example.invalid")
    git("config", "user.name", "t")
    (repo / ".gitattributes").write_text((config.repo_root() / ".gitattributes").read_text())
    notebooks.install_git_filter(repo)
    _old_style_notebook(repo / "n.ipynb")
    git("add", ".gitattributes", "n.ipynb")
    git("commit", "-q", "-m", "x")
    committed = json.loads(git("show", "HEAD:n.ipynb").stdout)
    assert committed["cells"][1]["outputs"] == [] and committed["cells"][1]["execution_count"] is None
    assert committed["metadata"]["kernelspec"]["display_name"] == "Python 3 (ipykernel)"
    assert json.loads((repo / "n.ipynb").read_text())["cells"][1]["outputs"]  # the reader's file keeps them


# --- threads that stay fast under load ----------------------------------------

def test_default_threads_follow_the_load(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(runtime, "busy_cores", lambda: 0)
    assert runtime.choose_threads() == (cores, f"{cores} idle cores") or cores == 1
    monkeypatch.setattr(runtime, "busy_cores", lambda: 1)
    assert runtime.choose_threads()[0] == max(1, cores - 1)
    monkeypatch.delenv("LDT_NUM_THREADS", raising=False)
    assert runtime.setup_threads() == max(1, cores - 1) == torch.get_num_threads()
    monkeypatch.setenv("LDT_NUM_THREADS", "1")
    assert runtime.setup_threads() == 1


def test_busy_cores_sees_a_spinning_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        assert runtime.busy_cores() >= 1
    finally:
        busy.kill()
        busy.wait()


def test_training_loops_rechoose_threads_for_the_load_now(monkeypatch):
    monkeypatch.delenv("LDT_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "choose_threads", lambda: (2, "idle"))
    assert runtime.setup_threads() == 2
    monkeypatch.setattr(runtime, "choose_threads", lambda: (1, "busy"))
    runtime.progress(range(3), disable=True)  # within min_interval: no new check
    assert torch.get_num_threads() == 2
    seen = []
    bar = runtime.progress(range(3), disable=True)
    for i in bar:  # the load changes while a loop runs
        seen.append(torch.get_num_threads())
        monkeypatch.setitem(runtime._THREADS, "checked", 0.0)
    assert seen == [2, 1, 1] and torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "choose_threads", lambda: (2, "idle again"))
    monkeypatch.setitem(runtime._THREADS, "checked", 0.0)
    runtime.progress(total=3, disable=True).update(1)  # bars driven by update() check too
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # someone chose explicitly: left alone
    monkeypatch.setitem(runtime._THREADS, "checked", 0.0)
    assert runtime.recheck_threads() == 1 and torch.get_num_threads() == 1
    assert runtime.setup_threads(1) == 1 and runtime.recheck_threads() == 1  # an argument is not re-chosen


_FAULTS = """
import resource, sys
import torch
from helpers import runtime
tuned = runtime.keep_freed_memory() if sys.argv[1] == "keep" else None
def step():                       # a training step's worth of fresh buffers, then freed
    held = [torch.ones(1 << 20) for _ in range(20)]     # 20 x 4 MiB, touched
    del held
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_keep_freed_memory_stops_the_page_faults_of_fresh_buffers():
    """Each process starts untouched; the tuned one refaults far fewer pages on repeated steps."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split()
        return out[0], int(out[1])
    (_, system), (tuned, kept) = faults("system"), faults("keep")
    assert tuned == "True"
    assert kept < system / 2, (kept, system)


def test_frames_grid_fits_more_columns_into_max_width():
    import matplotlib
    matplotlib.use("Agg")
    frames = [np.zeros((208, 512, 3), np.uint8)] * 8
    w, h = animation.frames_grid(frames, n=8, ncols=4).get_size_inches()
    assert abs(w - 13.0) < 1e-6 and abs(h - 2 * (208 / 512 * 13.0 / 4 + 0.35)) < 1e-6


def test_project_2d_is_deterministic_and_checks_its_method():
    """The one 2-D projection: (N, d) tensor or array -> (N, 2), same seed same picture,
    PCA recovers the two directions that carry the spread, an unknown method is refused."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(60, 5, generator=g) * torch.tensor([10.0, 3.0, 0.01, 0.01, 0.01])
    pca = plots.project_2d(z, "pca")
    assert pca.shape == (60, 2)
    assert np.allclose(np.abs(np.corrcoef(pca[:, 0], z[:, 0].numpy())[0, 1]), 1.0, atol=1e-3)
    a, b = plots.project_2d(z.numpy(), "tsne", seed=1), plots.project_2d(z, "tsne", seed=1)
    assert a.shape == (60, 2) and np.allclose(a, b)
    assert plots.project_2d(z[:5].reshape(5, 5, 1), "tsne").shape == (5, 2)   # small set, extra dims flattened
    with pytest.raises(ValueError, match="unknown projection 'umap': expected 'pca' or 'tsne'"):
        plots.project_2d(z, "umap")
