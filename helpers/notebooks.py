"""Notebook hygiene: notebooks are committed without outputs, in the format JupyterLab writes.

    python -m helpers.notebooks check notebooks/*.ipynb   # exit 1 if any has outputs or another format
    python -m helpers.notebooks strip notebooks/*.ipynb   # remove outputs, store JupyterLab's format, in place
    python -m helpers.notebooks clean < in.ipynb > out.ipynb   # the same, as a git "clean" filter
    python -m helpers.notebooks install-filter                 # what `make lab` runs

Why the format matters: when JupyterLab 4 opens a notebook and its kernel starts,
it writes the kernel's ``kernelspec`` (display name "Python 3 (ipykernel)") and
full ``language_info`` (codemirror mode, file extension, Python version, ...)
into the notebook's metadata. If the stored metadata differs, the notebook is
marked modified (●) before anything runs, and autosave writes it back, outputs
included. :func:`normalize` stores exactly what JupyterLab would write for
this environment's kernel, serialised as JupyterLab's server does (nbformat:
indent 1, sorted keys, lines split, a trailing newline, cell ids kept).

``make lab`` installs :func:`clean` as a git filter (:func:`install_git_filter`;
see the README, Development), so outputs a reader saves never reach a commit:
``.gitattributes`` marks ``*.ipynb`` with ``filter=ldt-notebook`` and the
repository's git config says what that filter runs. Git applies it when a
notebook is staged; the file on disk keeps its outputs.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

# What ipykernel's "python3" kernel reports; JupyterLab copies it into the notebook.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# Cell metadata JupyterLab adds while a reader works (collapsed/scrolled outputs, timings).
TRANSIENT_CELL_METADATA = ("collapsed", "scrolled", "execution")


def language_info() -> dict:
    """The ``language_info`` ipykernel reports for this interpreter."""
    return {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": platform.python_version(),
    }


def _read(text: str):
    import nbformat

    return nbformat.reads(text, as_version=4)


def _writes(nb) -> str:
    import nbformat

    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def normalize(nb):
    """Strip outputs, execution counts and transient cell metadata; set the metadata
    JupyterLab writes (kernelspec, language_info) and nbformat 4.5 with cell ids."""
    import nbformat

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in TRANSIENT_CELL_METADATA:
            cell.metadata.pop(key, None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = language_info()
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    if any("id" not in c for c in nb.cells):
        for cell in nb.cells:
            cell.setdefault("id", nbformat.v4.nbbase.random_cell_id())
    return nb


def clean(text: str) -> str:
    """The normalised text of a notebook given as text (:func:`normalize`)."""
    return _writes(normalize(_read(text)))


def dirty_cells(path: str | Path) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    nb = _read(Path(path).read_text())
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]


def format_problems(path: str | Path) -> list[str]:
    """How a notebook file differs from what :func:`strip` writes (empty: it does not)."""
    text = Path(path).read_text()
    nb = _read(text)
    problems = []
    if dirty_cells(path):
        problems.append(f"cells {dirty_cells(path)} carry outputs")
    meta = nb.metadata
    if meta.get("kernelspec") != KERNELSPEC:
        problems.append(f"kernelspec expected {KERNELSPEC}, found {meta.get('kernelspec')}")
    found_li = {k: v for k, v in meta.get("language_info", {}).items() if k != "version"}
    expected_li = {k: v for k, v in language_info().items() if k != "version"}
    if found_li != expected_li:
        problems.append(f"language_info expected {expected_li} (+ version), found {found_li}")
    if (nb.nbformat, nb.nbformat_minor) != (4, 5):
        problems.append(f"nbformat expected 4.5, found {nb.nbformat}.{nb.nbformat_minor}")
    if any("id" not in c for c in nb.cells):
        problems.append("cells without ids")
    if not problems:
        # Same notebook, same version string: the bytes must be what strip writes.
        expected = normalize(_read(text))
        expected.metadata["language_info"]["version"] = meta.get("language_info", {}).get("version")
        if _writes(expected) != text:
            problems.append("serialisation differs from JupyterLab's (indent 1, sorted keys, "
                            "trailing newline)")
    return problems


def strip(path: str | Path) -> bool:
    """Normalise a notebook in place (:func:`normalize`); return True if anything changed."""
    path = Path(path)
    text = path.read_text()
    new = clean(text)
    if new != text:
        path.write_text(new)
        return True
    return False


FILTER_NAME = "ldt-notebook"


def install_git_filter(repo: str | Path | None = None, python: str | None = None) -> str:
    """Configure the ``ldt-notebook`` git filter in ``repo`` (default: this repository).

    ``clean`` (run when a notebook is staged) is :func:`clean`, run by this
    project's Python; ``smudge`` (checkout) leaves files as they are. The filter
    is ``required``, so a failing clean stops the commit instead of letting
    outputs through. Returns the clean command.
    """
    import shlex
    import subprocess

    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    python = python or sys.executable
    command = f"{shlex.quote(python)} -m helpers.notebooks clean"
    root = Path(__file__).resolve().parent.parent
    # the filter runs in the repository's top folder; make helpers importable from anywhere
    command = f"PYTHONPATH={shlex.quote(str(root))} {command}"
    for key, value in ((f"filter.{FILTER_NAME}.clean", command),
                       (f"filter.{FILTER_NAME}.smudge", "cat"),
                       (f"filter.{FILTER_NAME}.required", "true")):
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True)
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
        if cmd == "strip":
            if strip(p):
                print(f"stripped {p}")
        else:
            problems = format_problems(p)
            if problems:
                print(f"{p}: {'; '.join(problems)}; run `make strip`")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
