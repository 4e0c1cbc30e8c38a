"""Saving and loading result objects: a directory with ``meta.json`` and ``arrays.safetensors``.

Every result type (TraceResult, Circuit, EditResult, ...) stores its metadata as JSON and its
tensors as safetensors through :func:`save_dir` / :func:`load_dir`; no pickle anywhere. A save is
atomic: the directory is written under a temporary name beside the target and renamed into place,
so an interrupted save never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

META = "meta.json"
ARRAYS = "arrays.safetensors"
FORMAT_VERSION = 1


class ResultFormatError(ValueError):
    """A directory does not hold a knowscope result of the expected kind."""


def save_dir(path: str | os.PathLike[str], kind: str, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> Path:
    """Write ``meta`` (JSON) and ``arrays`` (safetensors) to directory ``path``, atomically.

    An existing directory at ``path`` is replaced only after the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        body = {"kind": kind, "format_version": FORMAT_VERSION, **meta}
        (tmp / META).write_text(json.dumps(body, indent=1, ensure_ascii=False, default=_default) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in arrays.items()}
        save_file(tensors, str(tmp / ARRAYS))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_dir(path: str | os.PathLike[str], kind: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a result directory written by :func:`save_dir`; check its ``kind`` if given."""
    p = Path(path)
    if not (p / META).is_file():
        raise ResultFormatError(f"{p} is not a knowscope result directory (no {META})")
    try:
        meta = json.loads((p / META).read_text())
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"{p / META} is not valid JSON: {exc}") from exc
    if kind is not None and meta.get("kind") != kind:
        raise ResultFormatError(f"{p} holds a {meta.get('kind')!r} result, not a {kind!r}")
    arrays = load_file(str(p / ARRAYS)) if (p / ARRAYS).is_file() else {}
    return meta, arrays


def result_kind(path: str | os.PathLike[str]) -> str | None:
    """The ``kind`` of a saved result directory, or None if it is not one."""
    try:
        return json.loads((Path(path) / META).read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        return None


def _default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
