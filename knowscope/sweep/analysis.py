"""What a sweep says: does the tracing effect at a layer predict edit success there?

:class:`SweepResult` reads a store and answers, per method:

* ``by_layer`` — mean edit success per layer (efficacy, paraphrase, neighbourhood, locality, Hase et
  al.'s rewrite score and CounterFact's score: the harmonic mean of the efficacy, paraphrase and
  neighbourhood means) next to the mean tracing effect there;
* ``correlation`` — Spearman's rank correlation between the tracing effect at layer L (hidden, mlp,
  attn; at the fact's last subject token) and edit success at L: pooled over every (fact, layer)
  point, and per fact over the layers (mean and median over facts), and over the per-layer means;
* ``best_layer`` (highest mean success) vs ``located_layer`` (the layer :func:`~knowscope.circuits.locate`
  picks from the same traces: largest mean MLP effect) and the quality lost by editing at the located
  layer instead of the best one.

:func:`recommend_layer` turns a saved sweep into a layer choice with its evidence.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knowscope.facts import write_json_atomic
from knowscope.sweep.grid import TRACE_KINDS, edited_layers
from knowscope.sweep.store import SweepStore

#: success metrics analysed (per cell; ``score`` per cell is the harmonic mean of its three scores)
SUCCESS_METRICS = ("score", "rewrite_score", "efficacy_score", "paraphrase_score", "neighborhood_score",
                   "locality_acc", "efficacy_magnitude", "paraphrase_magnitude")
HEADLINE_METRICS = ("score", "rewrite_score", "efficacy_score", "paraphrase_score", "neighborhood_score")


def harmonic_mean(values: Iterable[float | None]) -> float | None:
    """CounterFact's score: the harmonic mean (0 if any value is 0; ``None`` if any is missing)."""
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return None
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def rank(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation over the pairs where both are present; ``None`` if undefined."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    rx, ry = rank([p[0] for p in pairs]), rank([p[1] for p in pairs])
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else None


@dataclass
class SweepResult:
    """A sweep store read into memory (see the module docstring for what it computes)."""

    settings: dict[str, Any]
    facts: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    traces: dict[int, dict[str, dict[int, float | None]]]
    errors: list[dict[str, Any]] = field(default_factory=list)
    path: str = ""
    _layer_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepResult:
        with SweepStore(path) as db:
            settings = db.settings
            if settings is None:
                raise ValueError(f"{path} holds no sweep yet (no settings written)")
            return cls(settings=settings, facts=db.facts_table(), cells=db.cells(), traces=db.traces(),
                       errors=db.errors(), path=str(path))

    # ------------------------------------------------------------------ tables
    @property
    def methods(self) -> list[str]:
        return [m for m in self.settings["methods"] if any(c["method"] == m for c in self.cells)]

    @property
    def layers(self) -> list[int]:
        return list(self.settings["layers"])

    def value(self, cell: dict[str, Any], metric: str) -> float | None:
        m = cell["metrics"]
        if metric == "score":
            return harmonic_mean(m.get(k) for k in ("efficacy_score", "paraphrase_score", "neighborhood_score"))
        v = m.get(metric)
        return None if v is None else float(v)

    def success(self, method: str, metric: str = "score") -> dict[tuple[int, int], float]:
        """``{(fact, layer): success}``, the mean over seeds."""
        acc: dict[tuple[int, int], list[float]] = {}
        for c in self.cells:
            if c["method"] == method:
                v = self.value(c, metric)
                if v is not None:
                    acc.setdefault((c["fact"], c["layer"]), []).append(v)
        return {k: sum(v) / len(v) for k, v in acc.items()}

    def effect(self, kind: str = "mlp") -> dict[tuple[int, int], float]:
        """``{(fact, layer): tracing effect}`` at the fact's last subject token."""
        return {(f, L): v for f, kinds in self.traces.items() for L, v in kinds.get(kind, {}).items()
                if v is not None}

    def mean_effect(self, kind: str = "mlp") -> list[float | None]:
        n = int(self.settings["n_layers"])
        eff = self.effect(kind)
        return [_mean(v for (f, L), v in eff.items() if L == layer) for layer in range(n)]

    def by_layer(self, method: str) -> list[dict[str, Any]]:
        """Per swept layer: mean of every success metric, CounterFact's score of the means, mean effects."""
        if method in self._layer_rows:  # read by every correlation and summary: computed once per method
            return self._layer_rows[method]
        rows = []
        effects = {k: self.mean_effect(k) for k in TRACE_KINDS}
        for layer in self.layers:
            cells = [c for c in self.cells if c["method"] == method and c["layer"] == layer]
            row: dict[str, Any] = {"layer": layer, "n": len(cells)}
            for metric in SUCCESS_METRICS:
                if metric != "score":
                    row[metric] = _mean(self.value(c, metric) for c in cells)
            row["score"] = harmonic_mean(row[k] for k in ("efficacy_score", "paraphrase_score", "neighborhood_score"))
            row["cell_score"] = _mean(self.value(c, "score") for c in cells)
            for kind in TRACE_KINDS:
                row[f"effect_{kind}"] = effects[kind][layer]
            rows.append(row)
        self._layer_rows[method] = rows
        return rows

    # ------------------------------------------------------------------ answers
    def best_layer(self, method: str, metric: str = "score") -> int | None:
        rows = [r for r in self.by_layer(method) if r["n"] and r.get(metric) is not None]
        return max(rows, key=lambda r: (r[metric], -r["layer"]))["layer"] if rows else None

    def located_layer(self, kind: str = "mlp") -> int | None:
        """The layer ``locate(kind=...)`` picks from these traces: the largest mean effect (all layers)."""
        eff = self.mean_effect(kind)
        known = [(v, -L) for L, v in enumerate(eff) if v is not None]
        return -max(known)[1] if known else None

    def quality_lost(self, method: str, metric: str = "score") -> dict[str, float | None]:
        """Per metric: mean success at the best layer (by ``metric``) minus at the located layer."""
        best, located = self.best_layer(method, metric), self.located_layer()
        rows = {r["layer"]: r for r in self.by_layer(method)}
        if best is None or located not in rows or not rows[located]["n"]:
            return {m: None for m in HEADLINE_METRICS}
        out = {}
        for m in HEADLINE_METRICS:
            a, b = rows[best].get(m), rows[located].get(m)
            out[m] = None if a is None or b is None else a - b
        return out

    def correlation(self, method: str, metric: str = "score", kind: str = "mlp") -> dict[str, Any]:
        """Spearman's rho between tracing effect and edit success: pooled, per fact, over layer means."""
        succ, eff = self.success(method, metric), self.effect(kind)
        keys = sorted(set(succ) & set(eff))
        pooled = spearman([eff[k] for k in keys], [succ[k] for k in keys])
        per_fact = {}
        for f in sorted({k[0] for k in keys}):
            ks = [k for k in keys if k[0] == f]
            per_fact[f] = spearman([eff[k] for k in ks], [succ[k] for k in ks])
        defined = [v for v in per_fact.values() if v is not None]
        layer_rows = self.by_layer(method)
        over_layers = spearman([r[f"effect_{kind}"] for r in layer_rows],
                               [r["score"] if metric == "score" else r.get(metric) for r in layer_rows])
        return {"pooled": pooled, "n_points": len(keys),
                "per_fact_mean": float(np.mean(defined)) if defined else None,
                "per_fact_median": float(np.median(defined)) if defined else None,
                "n_facts": len(defined), "layer_means": over_layers,
                "per_fact": {str(f): v for f, v in per_fact.items()}}

    def summary(self, method: str | None = None) -> dict[str, Any]:
        """The numbers of one method (default: the first) as the CLI's JSON reports them."""
        method = method or (self.methods[0] if self.methods else self.settings["methods"][0])
        corr = {m: self.correlation(method, m)["pooled"] for m in HEADLINE_METRICS}
        window = int(self.settings.get("window", 5))
        located, best = self.located_layer(), self.best_layer(method)
        n = int(self.settings["n_layers"])
        return {
            "method": method, "n_cells_stored": sum(c["method"] == method for c in self.cells),
            "located_layer": located, "best_layer": best,
            "located_layers": edited_layers(method, located, window, n) if located is not None else None,
            "best_layers": edited_layers(method, best, window, n) if best is not None else None,
            "quality_lost": self.quality_lost(method), "correlation": corr,
            "correlation_detail": {k: {m: {x: y for x, y in self.correlation(method, m, k).items() if x != "per_fact"}
                                       for m in HEADLINE_METRICS} for k in TRACE_KINDS},
            "by_layer": self.by_layer(method),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "store": self.path, "n_facts": len(self.facts),
                "n_cells": len(self.cells), "n_traced": len(self.traces), "n_errors": len(self.errors),
                "methods": {m: self.summary(m) for m in self.methods}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """The summary as JSON (written atomically)."""
        return write_json_atomic(path, self.to_dict())

    # ------------------------------------------------------------------ figures
    def figure(self, method: str | None = None) -> Any:
        """Edit success by layer, the mean tracing effect beside it, the located and best layers marked."""
        from plotly.subplots import make_subplots

        method = method or self.methods[0]
        rows = self.by_layer(method)
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        x = [r["layer"] for r in rows]
        for metric in ("score", "efficacy_score", "paraphrase_score", "neighborhood_score", "rewrite_score"):
            fig.add_scatter(x=x, y=[r.get(metric) for r in rows], name=metric, mode="lines+markers")
        fig.add_scatter(x=x, y=[r["effect_mlp"] for r in rows], name="tracing effect (mlp)", mode="lines",
                        line={"dash": "dot"}, secondary_y=True)
        located, best = self.located_layer(), self.best_layer(method)
        if located is not None:
            fig.add_vline(x=located, line_dash="dash", line_color="gray", annotation_text=f"located {located}")
        if best is not None:
            fig.add_vline(x=best, line_color="green", annotation_text=f"best {best}")
        fig.update_layout(title=f"{method.upper()} edit success by layer ({len(self.facts)} facts)",
                          xaxis_title="edited layer" + (" (window centre)" if method == "memit" else ""))
        fig.update_yaxes(title_text="edit success", secondary_y=False)
        fig.update_yaxes(title_text="tracing effect", secondary_y=True)
        return fig

    def correlation_figure(self, method: str | None = None, metric: str = "rewrite_score", kind: str = "mlp") -> Any:
        """Each (fact, layer): tracing effect against edit success, coloured by layer."""
        import plotly.graph_objects as go

        method = method or self.methods[0]
        succ, eff = self.success(method, metric), self.effect(kind)
        keys = sorted(set(succ) & set(eff))
        rho = self.correlation(method, metric, kind)["pooled"]
        fig = go.Figure(go.Scatter(
            x=[eff[k] for k in keys], y=[succ[k] for k in keys], mode="markers",
            marker={"color": [k[1] for k in keys], "colorscale": "Viridis", "showscale": True,
                    "colorbar": {"title": "layer"}},
            text=[f"fact {k[0]}, layer {k[1]}" for k in keys]))
        rho_s = "n/a" if rho is None else f"{rho:.2f}"
        fig.update_layout(title=f"{method.upper()}: {kind} tracing effect vs {metric} (Spearman ρ = {rho_s})",
                          xaxis_title=f"tracing effect ({kind}, last subject token)", yaxis_title=metric)
        return fig

    def fact_rows(self, fact: int, method: str | None = None) -> list[dict[str, Any]]:
        """One fact's cells by layer with its tracing effects (the viewer's fact table)."""
        method = method or self.methods[0]
        tr = self.traces.get(fact, {})
        out = []
        for c in sorted((c for c in self.cells if c["fact"] == fact and c["method"] == method),
                        key=lambda c: (c["layer"], c["seed"])):
            row = {"layer": c["layer"], "seed": c["seed"], **{m: self.value(c, m) for m in HEADLINE_METRICS}}
            row.update({f"effect_{k}": tr.get(k, {}).get(c["layer"]) for k in TRACE_KINDS})
            out.append(row)
        return out


@dataclass(frozen=True)
class LayerRecommendation:
    """The layer a saved sweep measured best for a method, with the evidence."""

    method: str
    layer: int
    layers: list[int]
    metric: str
    value: float
    located_layer: int | None
    located_value: float | None
    correlation: float | None
    n_facts: int
    store: str
    by_layer: list[dict[str, Any]]

    def __str__(self) -> str:
        loc = "" if self.located_layer is None else (
            f"; locate() picks {self.located_layer}" +
            ("" if self.located_value is None else f" ({self.metric} {self.located_value:.3f})"))
        return (f"{self.method.upper()}: edit at layer {self.layer} ({self.metric} {self.value:.3f} over "
                f"{self.n_facts} facts{loc})")


def recommend_layer(store: str | os.PathLike[str] | SweepResult, method: str = "rome",
                    metric: str = "score") -> LayerRecommendation:
    """The layer ``store`` measured best for ``method`` by ``metric`` (see :class:`SweepResult`)."""
    res = store if isinstance(store, SweepResult) else SweepResult.load(store)
    if method not in res.methods:
        raise ValueError(f"the sweep at {res.path} has no {method} cells (it has {res.methods or 'none'})")
    if metric not in SUCCESS_METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(SUCCESS_METRICS)}")
    rows = res.by_layer(method)
    best = res.best_layer(method, metric)
    if best is None:
        raise ValueError(f"the sweep at {res.path} has no {metric} values for {method}")
    located = res.located_layer()
    by = {r["layer"]: r for r in rows}
    n = int(res.settings["n_layers"])
    return LayerRecommendation(
        method=method, layer=best, layers=edited_layers(method, best, int(res.settings.get("window", 5)), n),
        metric=metric, value=float(by[best][metric]), located_layer=located,
        located_value=by[located][metric] if located in by else None,
        correlation=res.correlation(method, metric)["pooled"], n_facts=len({c["fact"] for c in res.cells}),
        store=res.path, by_layer=rows)
