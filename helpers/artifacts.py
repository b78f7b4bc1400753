"""Saving and loading what the notebooks make: atomically, safely, keyed by config.

Five rules, because a tutorial's artifacts outlive the kernel that made them:

1. **Atomic writes.** Everything is written to a temporary file in the same
   folder and renamed into place (:func:`atomic_write`), so an interrupted run
   never leaves a half-written file that a later run would trust. The
   temporary file of a run that was killed is removed by the next run
   (:func:`remove_stale_tmp`).
2. **Safe formats.** Tensors go into `safetensors` files, with a JSON metadata
   string beside them. Nothing is ever unpickled: a weight file a reader was
   handed cannot run code.
3. **Checked on load.** Each file stores a sha256 of its metadata and tensor
   bytes (:func:`tensors_digest`); :func:`load_tensors` recomputes it and checks
   that every floating tensor is finite, so a flipped byte or a block of NaN is
   an :class:`ArtifactError`, never a silently worse model.
4. **One model format.** Every trained model is written by :func:`save_model` and
   read by :func:`load_model`: its ``kind``, its architecture (the arguments that
   rebuild it), its weights, any extra tensors and JSON metadata, from a CPU copy;
   a wrong kind or a weight of the wrong shape is refused in one line.
5. **Keyed by config.** An artifact's file name carries a short hash of the
   settings that made it (:func:`config_key`), so notebook 03 finds the VAE that
   notebook 02 trained *with the same settings*, and rebuilds it otherwise
   (:func:`cached`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import config as _config
from . import runtime


class ArtifactError(RuntimeError):
    """A missing, corrupted or mismatched artifact; the message says what to do."""


def config_key(cfg: Mapping[str, Any], length: int = 12) -> str:
    """A short, stable hash of a config (key order does not matter)."""
    text = json.dumps(dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def training_key(cfg: Mapping[str, Any], keys) -> dict:
    """The part of ``cfg`` that changes what is trained: the entries named in ``keys`` (those
    present). A model's cache key is built from it, so a sampling or display knob (guidance,
    number of samples shown, GIF speed) never makes a new artifact or a retraining."""
    return {k: cfg[k] for k in keys if k in cfg}


STALE_SECONDS = 60.0
"""A temporary file older than this whose writer is gone is left over from a killed run."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (unknown counts as alive: never delete on a guess)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True           # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_tmp(folder: str | os.PathLike, pattern: str = ".*.tmp",
                     max_age: float = STALE_SECONDS) -> list[Path]:
    """Delete temporary files of interrupted :func:`atomic_write` calls in ``folder``.

    A file ``.<name>.<pid>.<random>.tmp`` is removed when it is older than
    ``max_age`` seconds and its writer process is gone (or, for a name without a
    pid, on age alone); any temporary file older than a day is removed. Files
    of a write still in progress are never touched. Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for tmp in folder.glob(pattern):
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue
        parts = tmp.name[:-len(".tmp")].rsplit(".", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        if age > 86400 or (age > max_age and (pid is None or not _pid_alive(pid))):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    The temporary name carries the writer's pid (``.<name>.<pid>.<random>.tmp``),
    so leftovers of a killed writer of the same file are removed here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path.parent, f".{_glob_escape(path.name)}.*.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`atomic_write`); return the path."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
    return Path(path)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def tensors_digest(tensors: Mapping[str, torch.Tensor], meta_json: str) -> str:
    """sha256 of the metadata text and of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors and JSON-able metadata to a safetensors file, atomically.

    The file's header also holds ``sha256``, the :func:`tensors_digest` of the
    metadata and tensors, which :func:`load_tensors` checks.
    """
    from safetensors.torch import save

    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(metadata or {}, sort_keys=True, default=str)
    meta = {"json": text, "sha256": tensors_digest(payload, text)}
    data = save(payload, metadata=meta)
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def load_tensors(path: str | os.PathLike, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_tensors`: ``(tensors, metadata)``.

    The stored sha256 is recomputed and every floating tensor must be finite. A
    missing, unreadable, corrupted or unchecked (no checksum) file raises
    :class:`ArtifactError`, one line naming the file and, via ``hint``, how to
    make it again.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    fix = f" {hint}" if hint else " Delete it and run the notebook that makes it again."
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}.{fix}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"artifact {path} cannot be read ({exc.strerror}).{fix}") from None
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        stored = header.get("__metadata__") or {}
        text = stored.get("json", "{}")
        meta = json.loads(text)
    except (SafetensorError, ValueError, AttributeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise ArtifactError(
            f"artifact {path} is corrupted or not a safetensors file ({reason}).{fix}"
        ) from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"artifact {path} is corrupted: its metadata is a {type(meta).__name__}, "
                            f"not a JSON object.{fix}")
    if "sha256" not in stored:
        raise ArtifactError(f"artifact {path} has no checksum (written by an older version), "
                            f"so it cannot be trusted.{fix}")
    found = tensors_digest(tensors, text)
    if found != stored["sha256"]:
        raise ArtifactError(f"artifact {path} is corrupted: its bytes changed since it was written "
                            f"(sha256 expected {stored['sha256'][:12]}.., found {found[:12]}..).{fix}")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ArtifactError(f"artifact {path}: tensor {name!r} holds {bad} non-finite values "
                                f"(NaN or inf), so it cannot be trusted.{fix}")
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


def save_model(path: str | os.PathLike, model: torch.nn.Module, kind: str, arch: Mapping[str, Any],
               tensors: Mapping[str, torch.Tensor] | None = None,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a trained model as one safetensors file (atomically, from a CPU copy).

    The file holds the model's weights as ``model.<name>``, the extra ``tensors``
    under their own names (histories, statistics), and the metadata ``kind`` (what
    the model is), ``arch`` (the JSON-able arguments that rebuild it, see
    :func:`load_model`) and ``metadata`` (anything else JSON-able).
    """
    payload = {f"model.{k}": v for k, v in model.state_dict().items()}
    for k, v in (tensors or {}).items():
        if k.startswith("model."):
            raise ValueError(f"extra tensor names must not start with 'model.' (reserved for the weights), got {k!r}")
        payload[k] = v
    for k in ("kind", "arch"):
        if k in (metadata or {}):
            raise ValueError(f"metadata key {k!r} is reserved; pass it as the argument {k}")
    meta = {**dict(metadata or {}), "kind": kind, "arch": dict(arch)}
    return save_tensors(path, payload, meta)


def load_model(path: str | os.PathLike, kind: str, make_model: Callable[[dict], torch.nn.Module],
               device: str | torch.device | None = None, hint: str = ""
               ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_model`: ``(model, extra tensors, metadata)``.

    ``make_model(arch)`` rebuilds the architecture from the stored ``arch``; the
    weights are loaded into it, and it is returned in eval mode on ``device``
    (None: :func:`helpers.runtime.device`). The extra tensors stay on the CPU.
    A file of another ``kind``, or whose weights do not fit the rebuilt model,
    raises :class:`ArtifactError` in one line saying what was expected and found.
    """
    path = Path(path)
    tensors, meta = load_tensors(path, hint=hint)
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path}: expected an artifact of kind {kind!r}, found kind {meta.get('kind')!r}")
    if not isinstance(meta.get("arch"), dict):
        raise ArtifactError(f"{path}: expected an architecture ('arch') in its metadata, "
                            f"found {meta.get('arch')!r}")
    model = make_model(meta["arch"])
    load_state(model, tensors, path, prefix="model.", what=f"{kind} {meta['arch']}")
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return model.to(runtime.device(device)).eval(), extra, meta


def _one_line(exc: BaseException, path: Path) -> str:
    """A load failure as one line that names the file."""
    if isinstance(exc, ArtifactError):
        return " ".join(str(exc).split())
    if isinstance(exc, KeyError):
        return f"artifact {path} lacks the metadata or tensor {exc.args[0]!r} its loader needs."
    reason = " ".join(str(exc).split())
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return f"artifact {path} could not be loaded ({type(exc).__name__}: {reason})."


def artifact_path(kind: str, cfg: Mapping[str, Any], suffix: str = ".safetensors") -> Path:
    """``<artifacts>/<kind>-<config hash><suffix>``."""
    return _config.artifacts_dir() / f"{kind}-{config_key(cfg)}{suffix}"


def cached(kind: str, cfg: Mapping[str, Any], build: Callable[[], Any],
           save: Callable[[Any, Path], None], load: Callable[[Path], Any],
           rebuild: bool = False, verbose: bool = True) -> Any:
    """Load the ``kind`` artifact made by ``cfg`` if it exists, else build and save it.

    ``save(obj, path)`` must write atomically (e.g. with :func:`save_tensors`).
    A file that fails to load for any reason (checksum, non-finite values, a
    missing metadata key, a wrong shape, unreadable) is reported in one line
    naming it and rebuilt from ``cfg``, never trusted. Temporary files left by
    a killed run in the artifacts folder are removed first.
    """
    path = artifact_path(kind, cfg)
    remove_stale_tmp(path.parent)
    if path.exists() and not rebuild:
        try:
            obj = load(path)
            if verbose:
                print(f"loaded {kind} from {path}")
            return obj
        except (ArtifactError, KeyError, IndexError, AttributeError, TypeError, ValueError,
                RuntimeError) as exc:
            print(f"warning: {_one_line(exc, path)} Rebuilding it from its settings.")
    obj = build()
    save(obj, path)
    if verbose:
        print(f"saved {kind} to {path}")
    return obj
