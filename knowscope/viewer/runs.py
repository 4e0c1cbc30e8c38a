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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowscope.results import META, ResultFormatError, read_json

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


def _fmt(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and x == x else "n/a"


def _model_of(meta: dict[str, Any]) -> str:
    for d in (meta, meta.get("meta") or {}, meta.get("settings") or {}):
        for key in ("model", "model_name"):
            if isinstance(d.get(key), str) and d[key]:
                return d[key]
    edits = meta.get("edits") or []
    if edits and edits[0].get("model_name"):
        return edits[0]["model_name"]
    return ""


def _edit_words(m: dict[str, Any]) -> str:
    reqs = m.get("requests") or []
    first = reqs[0] if reqs else {}
    what = f"{first.get('subject', '?')} -> {first.get('target_new', '?')!r}" if first else "no requests"
    more = f" (+{len(reqs) - 1} more)" if len(reqs) > 1 else ""
    return f"{m.get('method', '?')} at layers {m.get('layers')}: {what}{more}"


def _headline(kind: str, m: dict[str, Any]) -> str:
    """A line of the numbers that matter for each kind, from ``meta.json`` only."""
    if kind == "trace":
        peak = (m.get("peak") or {}).get("mlp") or {}
        return (f"{m.get('prompt')!r} -> {m.get('target')!r}: clean {_fmt(m.get('high_score'))}, "
                f"corrupted {_fmt(m.get('low_score'))}" + (f", MLP peak layer {peak['layer']}" if peak else ""))
    if kind == "trace_facts":
        return f"{len(m.get('facts', m.get('prompts', [])) or [])} facts, kinds {m.get('kinds')}"
    if kind == "layer_choice":
        return f"layer {m.get('layer')} ({m.get('trace_kind')} effect over {m.get('n_facts')} facts)"
    if kind == "circuit":
        inner = m.get("meta") or {}
        rel = ",".join((inner.get("batch") or {}).get("relations") or [])
        return (f"{inner.get('method', '?')} circuit{' of ' + rel if rel else ''}: faithfulness "
                f"{_fmt(m.get('faithfulness'), '.2f')}, {len((inner.get('batch') or {}).get('prompts') or [])} prompts")
    if kind == "circuit_diff":
        s = m.get("summary") or {}
        return (f"{s.get('n_gained')} edges gained, {s.get('n_lost')} lost, {s.get('n_reweighted')} re-weighted; "
                f"Jaccard {_fmt(s.get('jaccard'), '.2f')}")
    if kind == "edit":
        return _edit_words(m)
    if kind == "edit_session":
        edits = m.get("edits") or []
        return f"{len(edits)} edit(s)" + (f"; last: {_edit_words(edits[-1])}" if edits else "")
    if kind == "edit_metrics":
        cf = m.get("counterfact") or {}
        return (f"{m.get('n_facts')} facts: efficacy {_fmt(cf.get('efficacy_score'))}, paraphrase "
                f"{_fmt(cf.get('paraphrase_score'))}, neighbourhood {_fmt(cf.get('neighborhood_score'))}")
    if kind == "predictions":
        f = m.get("fact") or {}
        n = len(m.get("rows", []))
        return f"{f.get('subject')}: {f.get('target_true')!r} -> {f.get('target_new')!r}, {n} prompts"
    if kind == "activation_shift":
        top = ((m.get("summary") or {}).get("resid") or {}).get("top_layers")
        return f"{len(m.get('prompts', []))} prompts; residual moved most at layers {top}"
    if kind == "logit_lens":
        return f"{m.get('prompt')!r}" + (f", targets {m.get('targets')}" if m.get("targets") else "")
    if kind == "probe_report":
        acc = m.get("accuracy") or {}
        best = {k: max(v) for k, v in acc.items() if v}
        return "best held-out accuracy " + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in best.items())
    if kind == "linear_probe":
        return f"{m.get('method')} probe at {m.get('hook')}: accuracy {_fmt(m.get('accuracy'), '.2f')}"
    if kind == "steering_vector":
        return f"{len(m.get('heads') or [])} heads"
    if kind == "toxic_region":
        return f"toxic layer {m.get('layer')} ({m.get('distance', 'l2')} distance)"
    return ""


def describe(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> RunInfo:
    """A :class:`RunInfo` for one result directory (``ResultFormatError`` if it is not one)."""
    p = Path(path)
    try:
        meta = read_json(p / META)
    except OSError as exc:
        raise ResultFormatError(f"{p} is not a knowscope result directory (no readable {META})") from exc
    if not isinstance(meta, dict):
        raise ResultFormatError(f"{p / META} holds a JSON {type(meta).__name__}, not a result's metadata")
    kind = meta.get("kind")
    if not isinstance(kind, str):
        raise ResultFormatError(f"{p / META} has no 'kind'")
    date = _dt.datetime.fromtimestamp((p / META).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    group = "."
    if root is not None:
        try:
            group = str(p.parent.resolve().relative_to(Path(root).resolve())) or "."
        except ValueError:
            group = str(p.parent)
    try:
        headline, model = _headline(kind, meta), _model_of(meta)
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


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from knowscope.circuits import Circuit, CircuitDiff, FactsTraceResult, LayerChoice, ToxicRegion, TraceResult
    from knowscope.editing import EditResult
    from knowscope.editing.evaluate import EditMetrics, PredictionTable
    from knowscope.probes import ActivationShift, LinearProbe, LogitLensResult, ProbeReport, SteeringVector

    return {
        "trace": TraceResult.load, "trace_facts": FactsTraceResult.load, "layer_choice": LayerChoice.load,
        "circuit": Circuit.load, "circuit_diff": CircuitDiff.load, "toxic_region": ToxicRegion.load,
        "edit": EditResult.load, "edit_session": load_session_edits, "edit_metrics": EditMetrics.load,
        "predictions": PredictionTable.load, "activation_shift": ActivationShift.load,
        "logit_lens": LogitLensResult.load, "probe_report": ProbeReport.load, "linear_probe": LinearProbe.load,
        "steering_vector": SteeringVector.load,
    }


def load_session_edits(path: str | os.PathLike[str]) -> list[Any]:
    """The edits of a saved :class:`~knowscope.editing.EditSession`, in order, without a model."""
    from knowscope.editing import EditResult
    from knowscope.results import load_dir

    meta, arrays = load_dir(path, "edit_session")
    return [EditResult._from(m, {k.split("/", 1)[1]: v for k, v in arrays.items() if k.split("/", 1)[0] == str(i)})
            for i, m in enumerate(meta["edits"])]


def load_run(path: str | os.PathLike[str]) -> Any:
    """The typed result saved at ``path`` (TraceResult, Circuit, EditResult, ...)."""
    info = describe(path)
    loaders = _loaders()
    if info.kind not in loaders:
        raise ResultFormatError(f"{path} holds a {info.kind!r} result, which the viewer does not show "
                                f"(it shows {', '.join(sorted(loaders))})")
    return loaders[info.kind](Path(path))


def siblings(info: RunInfo, runs: list[RunInfo]) -> dict[str, RunInfo]:
    """The other results of ``info``'s group, by kind (the newest of each kind)."""
    out: dict[str, RunInfo] = {}
    for r in sorted(runs, key=lambda r: r.date, reverse=True):
        if r.group == info.group and r.path != info.path and r.kind not in out:
            out[r.kind] = r
    return out
