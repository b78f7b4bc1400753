"""pyproject.toml and environment.yml list the same packages; the CI calls the README's command."""

from pathlib import Path
import re
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _pyproject_packages():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    return {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in deps}


def _environment_packages():
    names, in_deps = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)
        if in_deps and m:
            name = m.group(1).lower()
            if name not in ("python", "pip"):
                names.add(CONDA_NAMES.get(name, name))
    return names


def test_environment_yml_matches_pyproject():
    py, env = _pyproject_packages(), _environment_packages()
    assert py == env, f"only in pyproject: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"
    assert "-e ." in (ROOT / "environment.yml").read_text()


def test_torch_is_not_pinned():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch"', text) and re.search(r'"torchvision"', text)


def test_ci_calls_make_test_and_readme_shows_it():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
