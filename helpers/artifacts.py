"""Saving and loading what the notebooks make: atomically, safely, keyed by config.

Three rules, because a tutorial's artifacts outlive the kernel that made them:

1. **Atomic writes.** Everything is written to a temporary file in the same
   folder and renamed into place (:func:`atomic_write`), so an interrupted run
   never leaves a half-written file that a later run would trust.
2. **Safe formats.** Tensors go into `safetensors` files, with a JSON metadata
   string beside them. Nothing is ever unpickled: a weight file a reader was
   handed cannot run code.
3. **Keyed by config.** An artifact's file name carries a short hash of the
   settings that made it (:func:`config_key`), so notebook 03 finds the VAE that
   notebook 02 trained *with the same settings*, and rebuilds it otherwise
   (:func:`cached`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import config as _config


class ArtifactError(RuntimeError):
    """A missing, corrupted or mismatched artifact; the message says what to do."""


def config_key(cfg: Mapping[str, Any], length: int = 12) -> str:
    """A short, stable hash of a config (key order does not matter)."""
    text = json.dumps(dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); give it the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors and JSON-able metadata to a safetensors file, atomically."""
    from safetensors.torch import save

    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata or {}, sort_keys=True, default=str)}
    data = save(payload, metadata=meta)
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def load_tensors(path: str | os.PathLike, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_tensors`: ``(tensors, metadata)``.

    A missing or unreadable file raises :class:`ArtifactError` naming the file
    and, via ``hint``, how to make it again.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    fix = f" {hint}" if hint else " Delete it and run the notebook that makes it again."
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}.{fix}")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("json", "{}"))
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"artifact {path} is corrupted or not a safetensors file ({exc}).{fix}"
        ) from None
    return tensors, meta


def load_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
               prefix: str = "", what: str = "model") -> torch.nn.Module:
    """Load the tensors named ``<prefix><name>`` into ``model``, checking every name and shape first.

    A file whose weights do not fit the architecture rebuilt from its metadata
    raises :class:`ArtifactError` naming the first parameter that differs, with
    the expected and the found shape, instead of torch's long error.
    """
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        bad = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
        raise ArtifactError(
            f"{path}: {what} weights do not match its architecture: parameter {bad[0]!r} "
            f"expected shape {expected.get(bad[0])}, found {found.get(bad[0])}")
    model.load_state_dict(state)
    return model


def artifact_path(kind: str, cfg: Mapping[str, Any], suffix: str = ".safetensors") -> Path:
    """``<artifacts>/<kind>-<config hash><suffix>``."""
    return _config.artifacts_dir() / f"{kind}-{config_key(cfg)}{suffix}"


def cached(kind: str, cfg: Mapping[str, Any], build: Callable[[], Any],
           save: Callable[[Any, Path], None], load: Callable[[Path], Any],
           rebuild: bool = False, verbose: bool = True) -> Any:
    """Load the ``kind`` artifact made by ``cfg`` if it exists, else build and save it.

    ``save(obj, path)`` must write atomically (e.g. with :func:`save_tensors`).
    A corrupted cached file is reported and rebuilt, never trusted.
    """
    path = artifact_path(kind, cfg)
    if path.exists() and not rebuild:
        try:
            obj = load(path)
            if verbose:
                print(f"loaded {kind} from {path}")
            return obj
        except ArtifactError as exc:
            print(f"warning: {exc} Rebuilding it.")
    obj = build()
    save(obj, path)
    if verbose:
        print(f"saved {kind} to {path}")
    return obj
