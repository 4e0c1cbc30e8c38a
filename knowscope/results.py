"""Saving and loading result objects: a directory with ``meta.json`` and ``arrays.safetensors``.

Every result type (TraceResult, Circuit, EditResult, ...) stores its metadata as JSON and its
tensors as safetensors through :func:`save_dir` / :func:`load_dir`; no pickle anywhere.

Every directory knowscope writes - a result, a group of results (``edit --save``), a converted
model in the cache - goes through :func:`atomic_directory`, which makes the write safe:

* nothing is lost: a path that holds anything other than a knowscope result of the same kind is
  refused (``overwrite=True`` also replaces a knowscope result of another kind or an empty folder;
  a folder with files knowscope did not write is never deleted), and an existing file is never
  replaced by a folder;
* atomic and crash-safe: the new directory is written under a temporary name beside the target,
  its files and the directory are fsynced, then the old target is renamed aside and the new one
  into place. A kill at any step leaves the old or the new result loadable: the next save or load
  of the same path restores a target left renamed aside and removes temporaries of dead writers;
* safe under concurrent writers: saves of one path take an exclusive lock (a file in the cache's
  ``locks/``, keyed by the path), loads a shared one, so two processes never interleave renames;
* verifiable: ``meta.json`` records the BLAKE2b checksum of ``arrays.safetensors``, and a load refuses
  arrays that do not match it (a result saved before checksums, without one, still loads);
* one clear error when the disk refuses: a full disk or a read-only folder is an :class:`OSError`
  naming the path (never a safetensors-internal error), and folders the save created are removed.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from knowscope.paths import lock_path

try:  # POSIX; elsewhere saves are still atomic, only not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

META = "meta.json"
ARRAYS = "arrays.safetensors"
GROUP = "knowscope-group.json"  # marks a folder of results written together (e.g. ``edit --save``)
#: the envelope written by this knowscope: ``{"kind", "format_version": 2, "data": {...}}``; version 1
#: (before the envelope) had the fields beside ``kind`` and is still read
FORMAT_VERSION = 2
#: the checksum of a saved array file, in ``meta.json``'s envelope: ``{"checksums": {ARRAYS: "blake2b:<hex>"}}``
CHECKSUM_ALGORITHM = "blake2b"


class ResultFormatError(ValueError):
    """A directory does not hold a knowscope result of the expected kind."""


class SaveRefusedError(ResultFormatError):
    """A save would replace something that is not a knowscope result of the same kind."""


# --------------------------------------------------------------------------------------------------
# what is at a path


def read_json(path: Path) -> Any:
    """JSON from ``path``; malformed, too deeply nested or non-UTF-8 content is a ResultFormatError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as exc:
        raise ResultFormatError(f"{path} is nested too deeply to be knowscope metadata") from exc
    except UnicodeDecodeError as exc:
        raise ResultFormatError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"{path} is not valid JSON: {exc}") from exc


def written_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of what knowscope wrote at ``path`` (a result's ``kind``, a group's ``group:KIND``), else None."""
    p = Path(path)
    for name, prefix in ((META, ""), (GROUP, "group:")):
        f = p / name
        if f.is_file():
            try:
                body = read_json(f)
            except (ResultFormatError, OSError):
                return None
            if isinstance(body, dict) and isinstance(body.get("kind"), str):
                return prefix + body["kind"]
    return None


def check_writable(path: str | os.PathLike[str], kind: str | None, overwrite: bool | None = None) -> Path:
    """Raise :class:`SaveRefusedError` unless a ``kind`` directory may be written at ``path``.

    Call it before long computations, so a bad ``--save`` fails in a second, not after the work;
    ``kind=None`` accepts whatever knowscope wrote (the kind is checked again when saving).
    ``overwrite=None`` uses :func:`allow_overwrite`'s setting.
    """
    target = Path(path)
    overwrite = _OVERWRITE.get() if overwrite is None else overwrite
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        what = "a folder of results" if kind is None else f"a {kind!r} result"
        raise SaveRefusedError(f"{target} exists and is not a folder; refusing to replace it with {what} "
                               "(choose another path)")
    if target.is_dir():
        found = written_kind(target)
        if found is not None and (kind is None or found == kind):
            return target
        empty = not any(target.iterdir())
        if found is None and not empty:
            raise SaveRefusedError(f"{target} is a folder with files knowscope did not write; refusing to replace it "
                                   "(choose a new or empty folder)")
        if found is not None and not overwrite:
            raise SaveRefusedError(f"{target} holds a knowscope {found!r} result, not a {kind!r} one; pass "
                                   "--overwrite (overwrite=True) to replace it")
    parent = nearest_existing(target.parent)
    if not parent.is_dir():
        raise SaveRefusedError(f"cannot save to {target}: {parent} is a file, not a folder")
    return target


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where writing below ``path`` would start)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --------------------------------------------------------------------------------------------------
# locking, recovery, fsync


@contextlib.contextmanager
def made_parents(path: str | os.PathLike[str]) -> Iterator[None]:
    """Create ``path``'s missing parent folders; if the body raises, remove those of them still empty
    (a save that fails - full disk, read-only folder - leaves no empty folders behind)."""
    parent = Path(path).parent
    start = nearest_existing(parent)
    made = [parent, *parent.parents]
    made = made[: made.index(start)] if start in made else []
    try:
        parent.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        for d in made:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def _locked(target: Path, exclusive: bool) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    lock = lock_path(target)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def path_lock(target: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock that saves of ``target`` hold (for check-then-write sequences like caches)."""
    return _locked(Path(target), exclusive=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path) -> list[tuple[str, int, Path]]:
    """Temporaries of earlier saves of ``target``: ("tmp" | "old", writer pid, path)."""
    out = []
    prefix = f".{target.name}."
    if not target.parent.is_dir():
        return out
    for p in target.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        parts = p.name[len(prefix):].split("-")
        if len(parts) >= 3 and parts[0] in ("tmp", "old") and parts[1].isdigit():
            out.append((parts[0], int(parts[1]), p))
    return out


def recover(target: str | os.PathLike[str]) -> None:
    """Finish or undo what a killed save of ``target`` left: restore a target left renamed aside,
    remove temporaries of writers that are no longer running. Called (under the lock) by every
    save and load; harmless when there is nothing to do."""
    target = Path(target)
    for what, pid, p in sorted(_leftovers(target), key=lambda x: x[0] != "old"):
        if _pid_alive(pid):
            continue
        if what == "old" and not target.exists():
            os.replace(p, target)  # killed between the two renames: the previous result comes back
        else:
            shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_OVERWRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("knowscope_overwrite", default=False)


@contextlib.contextmanager
def allow_overwrite(enabled: bool = True) -> Iterator[None]:
    """Inside this block, saves may replace a knowscope result of another kind (CLI: ``--overwrite``)."""
    token = _OVERWRITE.set(bool(enabled))
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


#: test hook: called with the step name at each step of a swap (fault injection in the tests)
_STEP: Callable[[str], None] = lambda step: None  # noqa: E731


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], kind: str, overwrite: bool | None = None,
                     check: bool = True, lock: bool = True) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary folder to fill, then swaps it into ``path``.

    ``kind`` is what will be at ``path`` (a result kind, or ``group:KIND`` for a folder of results);
    see the module docstring for what is refused, the crash-safety and the locking. If the body
    raises, nothing at ``path`` changes. ``check=False`` skips the refusal rules (for caches whose
    every file knowscope wrote); ``lock=False`` when the caller already holds :func:`path_lock`.
    """
    target = Path(path)
    with made_parents(target), _locked(target, exclusive=True) if lock else contextlib.nullcontext():
        recover(target)
        if check:  # under the lock: another writer's swap is never half-seen
            check_writable(target, kind, overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a result folder gets the usual permissions
        try:
            try:
                yield tmp
            except OSError as exc:  # name the result's path, not the temporary one (a full disk, ...)
                if isinstance(exc.filename, str) and exc.filename.startswith(str(tmp)):
                    exc.filename = str(target) + exc.filename[len(str(tmp)):]
                raise
            _fsync_tree(tmp)
            _STEP("written")
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
                os.replace(target, old)
                _STEP("moved-aside")
                os.replace(tmp, target)
                _STEP("swapped")
                _fsync_dir(target.parent)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
                _fsync_dir(target.parent)
            _STEP("done")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def save_dir(path: str | os.PathLike[str], kind: str, meta: dict[str, Any], arrays: dict[str, torch.Tensor],
             overwrite: bool | None = None) -> Path:
    """Write ``meta`` (JSON) and ``arrays`` (safetensors) to directory ``path`` (see :func:`atomic_directory`).

    An existing result of the same kind at ``path`` is replaced only after the new one is complete.
    """
    with atomic_directory(path, kind, overwrite) as tmp:
        data = {k: v for k, v in meta.items() if k not in ("kind", "format_version")}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in arrays.items()}
        write_safetensors(tensors, tmp / ARRAYS)
        body = {"kind": kind, "format_version": FORMAT_VERSION, "data": data,
                "checksums": {ARRAYS: f"{CHECKSUM_ALGORITHM}:{file_checksum(tmp / ARRAYS)}"}}
        (tmp / META).write_text(json.dumps(body, indent=1, ensure_ascii=False, default=_default) + "\n",
                                encoding="utf-8")
    return Path(path)


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """``save_file``, with a failed write (full disk, read-only folder) raised as an :class:`OSError`
    naming ``path`` instead of safetensors' own error."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:
        code = re.search(r"code: (\d+)", str(exc))
        if code is None:
            raise OSError(errno.EIO, f"could not write safetensors ({exc})", str(path)) from exc
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


def file_checksum(path: str | os.PathLike[str]) -> str:
    """The BLAKE2b (256-bit) hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A result directory's metadata as one flat dict (``kind``, ``format_version`` and the fields).

    Reads the envelope (version 2) and the flat layout before it (version 1); refuses a newer
    version, and metadata that is not a JSON object or lacks ``kind``, with the file named.
    """
    return _read_envelope(path)[0]


def _read_envelope(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`read_meta`'s dict and the envelope's checksums by file name (empty before checksums)."""
    f = Path(path) / META
    body = read_json(f)
    if not isinstance(body, dict):
        raise ResultFormatError(f"{f} holds a JSON {type(body).__name__}, not a result's metadata")
    if not isinstance(body.get("kind"), str):
        raise ResultFormatError(f"{f} has no 'kind'")
    version = body.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultFormatError(f"{f} has format_version {version!r}, which no knowscope wrote")
    if version > FORMAT_VERSION:
        raise ResultFormatError(f"{f} has format_version {version}; this knowscope reads up to {FORMAT_VERSION}: "
                                "upgrade knowscope to open it")
    if version == 1:
        return body, {}
    data = body.get("data")
    if not isinstance(data, dict):
        raise ResultFormatError(f"{f}: 'data' must be a JSON object, got {type(data).__name__}")
    sums = body.get("checksums", {})
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise ResultFormatError(f"{f}: 'checksums' must map file names to strings")
    return {**data, "kind": body["kind"], "format_version": version}, sums


def _verify(folder: Path, name: str, recorded: str) -> None:
    """Refuse ``folder / name`` unless its bytes have the checksum ``recorded`` (``"blake2b:<hex>"``)."""
    if name != ARRAYS:
        raise ResultFormatError(f"{folder / META} records a checksum of {name!r}; a result holds only {ARRAYS}")
    algorithm, _, digest = recorded.partition(":")
    if algorithm != CHECKSUM_ALGORITHM or not digest:
        raise ResultFormatError(f"{folder / META} records a {algorithm!r} checksum of {name}, which this knowscope "
                                f"does not know (it writes {CHECKSUM_ALGORITHM})")
    if not (folder / name).is_file():
        raise ResultFormatError(f"{folder}: {name} is missing, though {META} records its checksum")
    if file_checksum(folder / name) != digest:
        raise ResultFormatError(f"{folder}: its arrays do not match their checksum: the file was changed or "
                                f"corrupted ({name})")


# --------------------------------------------------------------------------------------------------
# the registry of result kinds


@dataclass(frozen=True)
class ResultKind:
    """One kind of saved result: how to load it and its one-line headline (from metadata alone)."""

    kind: str
    load: Callable[[Path], Any]
    headline: Callable[[dict[str, Any]], str]


_REGISTRY: dict[str, ResultKind] = {}


def register(kind: str, load: Callable[[Path], Any], headline: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Register a result kind (each result module calls this once, at import)."""
    _REGISTRY[kind] = ResultKind(kind, load, headline or (lambda meta: ""))


def registered() -> dict[str, ResultKind]:
    """The result kinds registered so far (import ``knowscope.circuits``, ``.editing``, ``.probes`` first)."""
    return dict(_REGISTRY)


def headline(kind: str, meta: dict[str, Any]) -> str:
    """The registered one-line summary of a result's metadata ("" for an unknown kind)."""
    entry = _REGISTRY.get(kind)
    return entry.headline(meta) if entry else ""


def load_result(path: str | os.PathLike[str]) -> Any:
    """The typed object saved at ``path``, by its kind's registered loader."""
    kind = read_meta(path)["kind"]
    if kind not in _REGISTRY:
        raise ResultFormatError(f"{path} holds a {kind!r} result, which no imported knowscope module loads "
                                f"(known: {', '.join(sorted(_REGISTRY)) or 'none'})")
    return _REGISTRY[kind].load(Path(path))


def fmt(x: Any, spec: str = ".3f") -> str:
    """A number for a headline ("n/a" for None or NaN)."""
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x else "n/a"


def write_group_marker(folder: Path, kind: str, meta: dict[str, Any] | None = None) -> None:
    """Mark ``folder`` (inside :func:`atomic_directory`) as a group of results knowscope wrote."""
    (folder / GROUP).write_text(json.dumps({"kind": kind, **(meta or {})}, indent=1) + "\n", encoding="utf-8")


def load_dir(path: str | os.PathLike[str], kind: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a result directory written by :func:`save_dir`; check its ``kind`` if given.

    Malformed content (metadata that is not a JSON object, nested too deeply, not UTF-8; arrays
    that are not safetensors, or whose bytes do not match the checksum in ``meta.json``) raises
    :class:`ResultFormatError` naming the file.
    """
    p = Path(path)
    with _locked(p, exclusive=False) if p.parent.is_dir() else contextlib.nullcontext():
        if p.parent.is_dir():
            with contextlib.suppress(OSError):
                recover(p)
        if not p.exists():
            raise ResultFormatError(f"{p} does not exist")
        if not (p / META).is_file():
            raise ResultFormatError(f"{p} is not a knowscope result directory (no {META})")
        meta, sums = _read_envelope(p)
        if kind is not None and meta.get("kind") != kind:
            raise ResultFormatError(f"{p} holds a {meta.get('kind')!r} result, not a {kind!r}")
        for name, recorded in sums.items():
            _verify(p, name, recorded)
        arrays: dict[str, torch.Tensor] = {}
        if (p / ARRAYS).is_file():
            try:
                arrays = load_file(str(p / ARRAYS))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ResultFormatError(f"{p / ARRAYS} is not a readable safetensors file ({exc})") from exc
    return meta, arrays


def result_kind(path: str | os.PathLike[str]) -> str | None:
    """The ``kind`` of a saved result directory, or None if it is not one."""
    found = written_kind(path)
    return None if found is None or found.startswith("group:") else found


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
