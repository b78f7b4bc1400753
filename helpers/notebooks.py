"""Notebook hygiene: notebooks are committed without outputs, in the format JupyterLab writes.

    python -m helpers.notebooks check notebooks/*.ipynb   # exit 1 if any has outputs or another format
    python -m helpers.notebooks strip notebooks/*.ipynb   # remove outputs, store JupyterLab's format, in place
    python -m helpers.notebooks clean < in.ipynb > out.ipynb   # the same, as a git "clean" filter
    python -m helpers.notebooks install-filter                 # what `make lab` runs

JupyterLab rewrites a notebook's ``kernelspec`` and ``language_info`` when its kernel starts, so
:func:`normalize` stores exactly what it would write; the git filter keeps saved outputs out of commits.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
TRANSIENT_CELL_METADATA = ("collapsed", "scrolled", "execution")   # what JupyterLab adds while a reader works
FILTER_NAME = "ldt-notebook"
# the language_info ipykernel reports for this interpreter
LANGUAGE_INFO = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                 "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                 "pygments_lexer": "ipython3", "version": platform.python_version()}


def _read(text: str):
    import nbformat
    return nbformat.reads(text, as_version=4)


def _writes(nb) -> str:
    import nbformat
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def normalize(nb, version: str | None = None):
    """Strip outputs and transient metadata; set JupyterLab's kernelspec, language_info, nbformat 4.5, ids."""
    import nbformat

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in TRANSIENT_CELL_METADATA:
            cell.metadata.pop(key, None)
        cell.setdefault("id", nbformat.v4.nbbase.random_cell_id())
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {**LANGUAGE_INFO, **({"version": version} if version else {})}
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    return nb


def clean(text: str) -> str:
    """The normalised text of a notebook given as text (:func:`normalize`)."""
    return _writes(normalize(_read(text)))


def dirty_cells(path: str | Path) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    return [i for i, c in enumerate(_read(Path(path).read_text()).cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]


def format_problems(path: str | Path) -> list[str]:
    """How a notebook file differs from what :func:`strip` writes (the stored Python version may differ)."""
    text = Path(path).read_text()
    nb = _read(text)
    dirty = dirty_cells(path)
    problems = [f"cells {dirty} carry outputs"] if dirty else []
    if nb.metadata.get("kernelspec") != KERNELSPEC:
        problems.append(f"kernelspec expected {KERNELSPEC}, found {nb.metadata.get('kernelspec')}")
    if not problems and _writes(normalize(_read(text), nb.metadata.get("language_info", {}).get("version"))) != text:
        problems.append("metadata (language_info, nbformat 4.5, cell ids) or serialisation (indent 1, sorted keys, "
                        "trailing newline) differ from JupyterLab's")
    return problems


def strip(path: str | Path) -> bool:
    """Normalise a notebook in place (:func:`normalize`); return True if anything changed."""
    path = Path(path)
    text = path.read_text()
    new = clean(text)
    if new != text:
        path.write_text(new)
    return new != text


def install_git_filter(repo: str | Path | None = None, python: str | None = None) -> str:
    """Configure the required ``ldt-notebook`` git filter (:func:`clean`) in ``repo``; return its command."""
    import shlex
    import subprocess

    root = Path(__file__).resolve().parent.parent
    command = f"PYTHONPATH={shlex.quote(str(root))} {shlex.quote(python or sys.executable)} -m helpers.notebooks clean"
    for key, value in (("clean", command), ("smudge", "cat"), ("required", "true")):
        subprocess.run(["git", "-C", str(repo or root), "config", f"filter.{FILTER_NAME}.{key}", value], check=True)
    return command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("check", "strip", "clean", "install-filter"):
        print(__doc__)
        return 2
    cmd, paths = argv[0], argv[1:]
    if cmd == "install-filter":
        print(f"git filter {FILTER_NAME}: clean = {install_git_filter(*paths[:1])}")
        return 0
    if cmd == "clean":  # git filter: notebook on stdin, normalised notebook on stdout
        sys.stdout.write(clean(sys.stdin.read()))
        return 0
    bad = 0
    for p in paths:
        if cmd == "strip" and strip(p):
            print(f"stripped {p}")
        problems = format_problems(p) if cmd == "check" else []
        if problems:
            print(f"{p}: {'; '.join(problems)}; run `make strip`")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
