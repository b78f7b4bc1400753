"""Saving and loading what the notebooks make: atomic safetensors files (nothing is unpickled) with a sha256,
named by a hash of the training settings (:func:`config_key`), which :func:`cached` records and checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import config as _config
from . import runtime


class ArtifactError(_config.ShortError, RuntimeError):
    """A missing, corrupted or mismatched artifact; the message names the file and what to do."""


def config_key(cfg: Mapping[str, Any], length: int = 12) -> str:
    """A short, stable hash of a config (key order does not matter)."""
    return hashlib.sha256(json.dumps(dict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:length]


def training_key(cfg: Mapping[str, Any], keys) -> dict:
    """The entries of ``cfg`` named in ``keys``: what changes what is trained."""
    return {k: cfg[k] for k in keys if k in cfg}


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (unknown counts as alive: never delete on a guess)."""
    try:
        os.kill(pid, 0) if pid != os.getpid() and os.name == "posix" else None
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def remove_stale_tmp(folder: str | os.PathLike, pattern: str = ".*.tmp", max_age: float = 60.0) -> list[Path]:
    """Delete temporary files ``.<name>.<pid>.<random>.tmp`` a killed writer left (older than ``max_age`` s)."""
    removed, now = [], time.time()
    for tmp in Path(folder).glob(pattern) if Path(folder).is_dir() else []:
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue
        parts = tmp.name[:-len(".tmp")].rsplit(".", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        if age > 86400 or (age > max_age and (pid is None or not _pid_alive(pid))):
            with suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Write to a temporary file next to ``path``, renamed to ``path`` on success (removed on an exception)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path.parent, "." + "".join(f"[{c}]" if c in "*?[" else c for c in path.name) + ".*.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)      # mkstemp makes the file private (0600); give it the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
    return Path(path)


def tensors_digest(tensors: Mapping[str, torch.Tensor], meta_json: str) -> str:
    """sha256 of the metadata text and of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


_CURRENT: dict[str, Any] = {}


def blame(settings: Mapping[str, Any]) -> str:
    """The settings most likely to make training diverge: the learning rates (``lr``, ``*_lr``)."""
    found = [f"{k}={v!r}" for k, v in settings.items() if re.search(r"(^|_)lr$", k)]
    found += [f"{k}.{b}" for k, v in settings.items() if isinstance(v, Mapping) for b in blame(v).split(", ") if b]
    return ", ".join(found)


def _implausible(meta: Any, where: str = "") -> str | None:
    """The first accuracy (a key ``acc`` or ``*_acc``) in ``meta`` that is not a number in [0, 100], if any."""
    items = meta.items() if isinstance(meta, Mapping) else enumerate(meta) if isinstance(meta, list) else []
    for k, v in items:
        if re.search(r"(^|_)acc$", str(k)) and isinstance(v, (int, float)) and not 0 <= v <= 100:
            return f"{where}{k} = {v!r} (accuracies lie in [0, 100])"
        bad = _implausible(v, f"{where}{k}." if isinstance(k, str) else f"{where}[{k}].")
        if bad:
            return bad
    return None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors and metadata (inside :func:`cached`, with its ``settings``) to a checked safetensors file."""
    from safetensors.torch import save

    path = Path(path)
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(metadata or {}) if isinstance(metadata, Mapping) or metadata is None else metadata
    if _CURRENT.get("path") == path:
        meta["settings"] = _CURRENT["settings"]
    for name, t in payload.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            culprits = blame(_CURRENT["settings"] if _CURRENT.get("path") == path else {})
            raise runtime.DivergenceError(
                f"refusing to save {path}: tensor {name!r} holds {int((~torch.isfinite(t)).sum())} NaN/inf "
                f"values, so training diverged and nothing was saved"
                + (f"; the settings most likely to blame: {culprits} (lower them)" if culprits else ""))
    bad = _implausible(meta)
    if bad:
        raise ArtifactError(f"refusing to save {path}: implausible {bad}")
    text = json.dumps(meta, sort_keys=True, default=str)
    data = save(payload, metadata={"json": text, "sha256": tensors_digest(payload, text)})
    with atomic_write(path) as f:
        f.write(data)
    return path


def _differences(recorded: Mapping, requested: Mapping) -> str:
    keys = sorted(set(recorded) | set(requested), key=str)
    diff = [k for k in keys if recorded.get(k, "<absent>") != requested.get(k, "<absent>")]
    return (", ".join(f"{k}={recorded.get(k, '<absent>')!r}" for k in diff) + "; requested "
            + ", ".join(f"{k}={requested.get(k, '<absent>')!r}" for k in diff))


def load_tensors(path: str | os.PathLike, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_tensors`: ``(tensors, metadata)``, else an :class:`ArtifactError`."""
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
        stored = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")]).get("__metadata__") or {}
        text = stored.get("json", "{}")
        meta = json.loads(text)
    except (SafetensorError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"artifact {path} is corrupted or not a safetensors file "
                            f"({' '.join(str(exc).split())[:120]}).{fix}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"artifact {path} is corrupted: its metadata is a {type(meta).__name__}, not a JSON object.{fix}")
    if "sha256" not in stored:
        raise ArtifactError(f"artifact {path} has no checksum (written by an older version), so it cannot be trusted.{fix}")
    found = tensors_digest(tensors, text)
    if found != stored["sha256"]:
        raise ArtifactError(f"artifact {path} is corrupted: its bytes changed since it was written "
                            f"(sha256 expected {stored['sha256'][:12]}.., found {found[:12]}..).{fix}")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"artifact {path}: tensor {name!r} holds {int((~torch.isfinite(t)).sum())} "
                                f"non-finite values (NaN or inf), so it cannot be trusted.{fix}")
    bad = _implausible(meta)
    if bad:
        raise ArtifactError(f"artifact {path} holds an implausible {bad}.{fix}")
    recorded, name_key = meta.get("settings"), re.fullmatch(r".+-([0-9a-f]{12})\.safetensors", path.name)
    if _CURRENT.get("path") == path and recorded is not None:
        if recorded != _CURRENT["settings"]:
            raise ArtifactError(f"artifact {path} was made with other settings: recorded "
                                f"{_differences(recorded, _CURRENT['settings'])}.{fix}")
        _CURRENT["matched"] = True
    if recorded is not None and name_key and config_key(recorded) != name_key.group(1):
        raise ArtifactError(f"artifact {path} was made with other settings than its name says "
                            f"(recorded {recorded}).{fix}")
    return tensors, meta


def load_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
               prefix: str = "", what: str = "model") -> torch.nn.Module:
    """Load the tensors ``<prefix><name>`` into ``model`` after checking every name and shape."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        bad = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
        raise ArtifactError(f"{path}: {what} weights do not match its architecture: parameter {bad[0]!r} "
                            f"expected shape {expected.get(bad[0])}, found {found.get(bad[0])}")
    model.load_state_dict(state)
    return model


def save_model(path: str | os.PathLike, model: torch.nn.Module, kind: str, arch: Mapping[str, Any],
               tensors: Mapping[str, torch.Tensor] | None = None,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a model as one file: weights as ``model.<name>``, extra ``tensors``, ``kind`` and ``arch``."""
    payload = {f"model.{k}": v for k, v in model.state_dict().items()}
    for k, v in (tensors or {}).items():
        if k.startswith("model."):
            raise ValueError(f"extra tensor names must not start with 'model.' (reserved for the weights), got {k!r}")
        payload[k] = v
    for k in ("kind", "arch", "settings"):
        if k in (metadata or {}):
            raise ValueError(f"metadata key {k!r} is reserved" + ("" if k == "settings" else f"; pass it as the argument {k}"))
    return save_tensors(path, payload, {**dict(metadata or {}), "kind": kind, "arch": dict(arch)})


def load_model(path: str | os.PathLike, kind: str, make_model: Callable[[dict], torch.nn.Module],
               device: str | torch.device | None = None, hint: str = ""
               ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_model`: ``(model in eval mode, extra tensors, metadata)``."""
    path = Path(path)
    tensors, meta = load_tensors(path, hint=hint)
    if meta.get("kind") != kind:
        raise ArtifactError(f"{path}: expected an artifact of kind {kind!r}, found kind {meta.get('kind')!r}")
    if not isinstance(meta.get("arch"), dict):
        raise ArtifactError(f"{path}: expected an architecture ('arch') in its metadata, found {meta.get('arch')!r}")
    model = load_state(make_model(meta["arch"]), tensors, path, prefix="model.", what=f"{kind} {meta['arch']}")
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return model.to(runtime.device(device)).eval(), extra, meta


def artifact_path(kind: str, cfg: Mapping[str, Any], suffix: str = ".safetensors") -> Path:
    """``<artifacts>/<kind>-<config hash><suffix>``."""
    return _config.artifacts_dir() / f"{kind}-{config_key(cfg)}{suffix}"


@contextmanager
def recording(path: str | os.PathLike, cfg: Mapping[str, Any]):
    """Inside the block, saving ``path`` records ``cfg`` as its settings and loading it requires them."""
    path = Path(path)
    before = dict(_CURRENT)        # a loader may itself load another artifact through cached()
    _CURRENT.update(path=path, settings=json.loads(json.dumps(dict(cfg), sort_keys=True, default=str)))
    try:
        yield
    finally:
        _CURRENT.clear()
        _CURRENT.update(before)


def cached(kind: str, cfg: Mapping[str, Any], build: Callable[[], Any],
           save: Callable[[Any, Path], None], load: Callable[[Path], Any],
           rebuild: bool = False, verbose: bool = True) -> Any:
    """Load the ``kind`` artifact made by ``cfg`` if it is sound, else build and save it (a corrupted one too)."""
    path = artifact_path(kind, cfg)
    remove_stale_tmp(path.parent)
    if path.exists() and not rebuild:
        try:
            with recording(path, cfg):
                obj = load(path)
                if not _CURRENT.get("matched"):
                    raise ArtifactError(f"artifact {path} records no settings, so it cannot be matched to the "
                                        f"requested ones.")
            if verbose:
                print(f"loaded {kind} from {path}")
            return obj
        except ArtifactError as exc:
            print(f"warning: {' '.join(str(exc).split())} Rebuilding it from its settings.")
        except KeyError as exc:
            print(f"warning: artifact {path} lacks the metadata or tensor {exc.args[0]!r} its loader needs. "
                  f"Rebuilding it from its settings.")
        except Exception as exc:
            exc.add_note(f"(while loading the artifact {path}; the file was kept)")
            raise
    obj = build()
    with recording(path, cfg):
        save(obj, path)
    if verbose:
        print(f"saved {kind} to {path}")
    return obj


def cached_model(name: str, key: Mapping[str, Any], build: Callable[[], Any], make: Callable[[dict], torch.nn.Module],
                 arch: Mapping[str, Any], kind: str | None = None, device=None, rebuild: bool = False,
                 freeze: bool = False):
    """``build() -> (model, history)`` cached as the artifact ``name`` keyed by ``key``: the model (``kind`` in the
    file, default ``name``; rebuilt by ``make(arch)`` on ``device``), the history's lists and its ``seconds``.
    With ``freeze``, a loaded model's parameters need no gradient."""
    kind = kind or name

    def save(obj, path):
        tensors = {f"hist.{k}": torch.tensor(v) for k, v in obj[1].items() if isinstance(v, list)}
        save_model(path, obj[0], kind, arch, tensors, {"config": dict(key), "seconds": obj[1].get("seconds")})

    def load(path):
        model, tensors, meta = load_model(path, kind, make, device=device)
        for p in model.parameters() if freeze else ():
            p.requires_grad_(False)
        return model, {**{k[5:]: v.tolist() for k, v in tensors.items()}, "seconds": meta.get("seconds")}

    return cached(name, key, build, save, load, rebuild=rebuild)
