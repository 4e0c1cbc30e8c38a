"""Find, describe and load the results saved under a runs folder (no Streamlit here).

Every knowscope result saves as a directory with ``meta.json`` (its ``kind``) and
``arrays.safetensors`` (:mod:`knowscope.results`). :func:`scan_runs` walks a folder for such
directories and describes each from its ``meta.json`` alone (kind, model, date, headline numbers),
so listing a large folder reads no arrays; :func:`load_run` turns one into its typed object.
Results saved side by side (``runs/demo/{trace,circuit,edit,metrics,...}``) form a *group*: the
viewer shows an edit together with its metrics, predictions and activation shift from the same
group.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowscope.results import META, ResultFormatError, read_meta, registered
from knowscope.results import headline as result_headline

logger = logging.getLogger(__name__)

SKIP_KINDS = {"key_stats"}  # caches, not results


@dataclass(frozen=True)
class RunInfo:
    """One saved result: where it is, what it is, and its headline numbers."""

    path: Path
    kind: str
    model: str
    date: str
    headline: str
    group: str  # the folder holding it, relative to the runs folder ("." for the top)

    @property
    def name(self) -> str:
        return self.path.name

    def to_row(self) -> dict[str, str]:
        return {"group": self.group, "name": self.name, "kind": self.kind, "model": self.model, "date": self.date,
                "headline": self.headline}


def _model_of(meta: dict[str, Any]) -> str:
    for d in (meta, meta.get("meta") or {}, meta.get("settings") or {}):
        for key in ("model", "model_name"):
            if isinstance(d.get(key), str) and d[key]:
                return d[key]
    edits = meta.get("edits") or []
    if edits and edits[0].get("model_name"):
        return edits[0]["model_name"]
    return ""


def describe(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> RunInfo:
    """A :class:`RunInfo` for one result directory (``ResultFormatError`` if it is not one)."""
    p = Path(path)
    try:
        meta = read_meta(p)
    except OSError as exc:
        raise ResultFormatError(f"{p} is not a knowscope result directory (no readable {META})") from exc
    kind = meta["kind"]
    date = _dt.datetime.fromtimestamp((p / META).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    group = "."
    if root is not None:
        try:
            group = str(p.parent.resolve().relative_to(Path(root).resolve())) or "."
        except ValueError:
            group = str(p.parent)
    try:
        _registry()
        headline, model = result_headline(kind, meta), _model_of(meta)
    except Exception as exc:  # odd metadata must never hide a run
        logger.warning("no headline for %s: %s", p, exc)
        headline, model = "", ""
    return RunInfo(path=p, kind=kind, model=model, date=date, headline=headline, group=group)


def scan_runs(root: str | os.PathLike[str], max_depth: int = 4) -> list[RunInfo]:
    """Every result directory under ``root`` (``root`` itself included), newest group first.

    Hidden directories (temporary ones of an unfinished save start with ``.``) and caches are skipped;
    symbolic links are not followed out of ``root``; one unreadable run is skipped and logged, never
    more.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"runs folder {base} does not exist; save runs there first (e.g. `knowscope demo`)")
    found: list[RunInfo] = []

    inside = base.resolve()

    def within(c: Path) -> bool:
        try:
            c.resolve().relative_to(inside)
        except (ValueError, OSError, RuntimeError):
            return False
        return True

    def walk(d: Path, depth: int) -> None:
        if (d / META).is_file():
            try:
                info = describe(d, base)
            except (ResultFormatError, OSError, RecursionError, ValueError) as exc:
                logger.warning("skipping %s: %s", d, exc)
                return
            if info.kind not in SKIP_KINDS:
                found.append(info)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".") and within(c))
        except OSError:
            return
        for c in children:
            walk(c, depth + 1)

    walk(base, 0)
    latest: dict[str, str] = {}
    for r in found:
        latest[r.group] = max(latest.get(r.group, ""), r.date)
    return sorted(found, key=lambda r: (latest[r.group], r.group, r.name), reverse=True)


def _registry() -> dict[str, Any]:
    """Every saved kind the viewer can open (importing the packages registers them)."""
    import knowscope.circuits  # noqa: F401
    import knowscope.editing.evaluation  # noqa: F401
    import knowscope.probes  # noqa: F401
    import knowscope.safety.metrics  # noqa: F401

    return registered()


def load_run(path: str | os.PathLike[str]) -> Any:
    """The typed result saved at ``path`` (TraceResult, Circuit, EditResult, ...)."""
    info = describe(path)
    kinds = _registry()
    if info.kind not in kinds:
        raise ResultFormatError(f"{path} holds a {info.kind!r} result, which the viewer does not show "
                                f"(it shows {', '.join(sorted(kinds))})")
    return kinds[info.kind].load(Path(path))


def siblings(info: RunInfo, runs: list[RunInfo]) -> dict[str, RunInfo]:
    """The other results of ``info``'s group, by kind (the newest of each kind)."""
    out: dict[str, RunInfo] = {}
    for r in sorted(runs, key=lambda r: r.date, reverse=True):
        if r.group == info.group and r.path != info.path and r.kind not in out:
            out[r.kind] = r
    return out
