"""Notebook hygiene: notebooks are committed without outputs.

    python -m helpers.notebooks check notebooks/*.ipynb   # exit 1 if any has outputs
    python -m helpers.notebooks strip notebooks/*.ipynb   # remove outputs in place
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def dirty_cells(path: str | Path) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    nb = json.loads(Path(path).read_text())
    return [i for i, c in enumerate(nb.get("cells", []))
            if c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count"))]


def strip(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; return True if anything changed."""
    path = Path(path)
    nb = json.loads(path.read_text())
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("check", "strip"):
        print(__doc__)
        return 2
    cmd, paths = argv[0], argv[1:]
    bad = 0
    for p in paths:
        if cmd == "strip":
            if strip(p):
                print(f"stripped {p}")
        elif dirty_cells(p):
            print(f"{p}: cells {dirty_cells(p)} carry outputs; run `make strip`")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
