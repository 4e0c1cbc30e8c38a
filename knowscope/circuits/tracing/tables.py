"""Causal-trace results: one trace's table (:class:`TraceResult`), many facts' token-class averages
(:class:`FactsTraceResult`), and the chosen layer (:class:`LayerChoice`); each saves, loads and draws itself."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.circuits.tracing.inputs import TOKEN_CLASS_LABELS, TOKEN_CLASSES, token_classes
from knowscope.models.tokens import visible
from knowscope.results import fmt, load_dir, register, save_dir

logger = logging.getLogger(__name__)


@dataclass
class TraceResult:
    """A causal trace of one prompt: scores per kind, ``[token, layer]``, plus the run's settings.

    ``scores[kind][t, L]`` is the mean probability of the target's first token with cell (t, L)
    restored; ``low_score`` with nothing restored, ``high_score`` on the clean run. The indirect
    effect of a cell is ``score - low_score``.
    """

    prompt: str
    subject: str
    tokens: list[str]
    subject_range: tuple[int, int]
    target: str
    target_id: int
    scores: dict[str, Float[Tensor, "pos layer"]]
    low_score: float
    high_score: float
    samples: int
    noise: float | None
    noise_std: float
    window: int
    seed: int
    method: str
    seconds: float = 0.0
    forward_passes: int = 0
    model_name: str = ""
    fingerprint: str = ""

    @property
    def kinds(self) -> list[str]:
        return list(self.scores)

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.scores.values())).shape[1])

    def indirect_effect(self, kind: str) -> Float[Tensor, "pos layer"]:
        return self.scores[kind] - self.low_score

    def peak(self, kind: str) -> dict[str, int]:
        """The (token, layer) cell with the highest score of ``kind``."""
        s = torch.nan_to_num(self.scores[kind], nan=-math.inf)
        flat = int(s.argmax())
        return {"layer": flat % s.shape[1], "token": flat // s.shape[1]}

    def token_classes(self) -> dict[str, list[int]]:
        """Token positions of each of ROME's token classes (empty where a class does not occur)."""
        return token_classes(self.subject_range, len(self.tokens))

    def class_summary(self) -> list[dict[str, Any]]:
        """ROME's token-class summary of this trace: per kind and token class, the largest mean
        indirect effect over layers and the layer where it occurs (classes absent from the prompt
        or untraced are left out)."""
        agg = aggregate([self])
        rows = []
        for kind in self.kinds:
            for c in TOKEN_CLASSES:
                if agg.class_counts[c] == 0:
                    continue
                eff = agg.effect(kind, c)
                layer = int(torch.nan_to_num(eff, nan=-math.inf).argmax())
                rows.append({"kind": kind, "token_class": c, "peak_effect": float(eff[layer]), "peak_layer": layer})
        return rows

    def located_layer(self, kind: str = "mlp") -> int:
        """The layer :func:`locate` would pick from this trace alone: the largest ``kind`` indirect
        effect at the last subject token."""
        if kind not in self.scores:
            raise ValueError(f"kind {kind!r} was not traced; traced: {', '.join(self.kinds)}")
        agg = aggregate([self])
        if agg.class_counts["last_subject"] == 0:
            raise ValueError("this trace has no last subject token before the last token; cannot locate")
        return choose_layers([float(x) for x in agg.effect(kind, "last_subject")], None)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "tokens": self.tokens,
            "subject_range": list(self.subject_range),
            "target": self.target,
            "target_id": self.target_id,
            "kinds": self.kinds,
            "scores": {k: _json_table(v) for k, v in self.scores.items()},
            "low_score": self.low_score,
            "high_score": self.high_score,
            "peak": {k: self.peak(k) for k in self.scores},
            "samples": self.samples,
            "noise": self.noise,
            "noise_std": self.noise_std,
            "window": self.window,
            "seed": self.seed,
            "method": self.method,
            "seconds": self.seconds,
            "forward_passes": self.forward_passes,
            "model": self.model_name,
            "fingerprint": self.fingerprint,
        }

    def save(self, path: str | Path) -> Path:
        meta = self.to_dict()
        meta.pop("scores")
        return save_dir(path, "trace", meta, {f"scores.{k}": v for k, v in self.scores.items()})

    @classmethod
    def load(cls, path: str | Path) -> TraceResult:
        meta, arrays = load_dir(path, "trace")
        return cls(
            prompt=meta["prompt"], subject=meta["subject"], tokens=list(meta["tokens"]),
            subject_range=tuple(meta["subject_range"]), target=meta["target"], target_id=int(meta["target_id"]),
            scores={k: arrays[f"scores.{k}"] for k in meta["kinds"]}, low_score=float(meta["low_score"]),
            high_score=float(meta["high_score"]), samples=int(meta["samples"]), noise=meta["noise"],
            noise_std=float(meta["noise_std"]), window=int(meta["window"]), seed=int(meta["seed"]),
            method=meta["method"], seconds=float(meta["seconds"]), forward_passes=int(meta["forward_passes"]),
            model_name=meta.get("model", ""), fingerprint=meta.get("fingerprint", ""),
        )

    def score_range(self) -> tuple[float, float]:
        """The smallest and largest probability in any panel (the corrupted and clean runs included)."""
        vals = [self.low_score, self.high_score]
        for s in self.scores.values():
            finite = s[~torch.isnan(s)]
            if finite.numel():
                vals += [float(finite.min()), float(finite.max())]
        return min(vals), max(vals)

    def figure(self, zrange: tuple[float, float] | None = None, title: str | None = None) -> Any:
        """ROME-style heatmaps (tokens x layers, subject tokens starred), one panel per kind.

        Every panel shares one colour scale (``zrange``, default :meth:`score_range`; pass the union of
        two traces' ranges to compare a before and an after) and has its own colour bar, so the
        panels' shades mean the same probability.
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        s0, s1 = self.subject_range
        labels = [f"{i}: {visible(t)}" + (" *" if s0 <= i < s1 else "") for i, t in enumerate(self.tokens)]
        titles = {"hidden": "single restored layer (hidden)", "mlp": f"restored MLP (window {self.window})",
                  "attn": f"restored attention (window {self.window})",
                  "hidden_frozen_mlp": "hidden, later MLPs frozen", "hidden_frozen_attn": "hidden, later attn frozen"}
        colors = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
        zmin, zmax = zrange or self.score_range()
        n = len(self.scores)
        gap = 0.09
        fig = make_subplots(rows=1, cols=n, subplot_titles=[titles[k] for k in self.scores],
                            shared_yaxes=True, horizontal_spacing=gap)
        width = (1 - gap * (n - 1)) / n
        for i, (kind, s) in enumerate(self.scores.items(), 1):
            right = (i - 1) * (width + gap) + width
            fig.add_trace(
                go.Heatmap(z=s.tolist(), x=list(range(s.shape[1])), y=labels, zmin=zmin, zmax=zmax,
                           colorscale=colors.get(kind.split("_")[-1], "Purples"), showscale=True,
                           colorbar={"x": right + 0.005, "xanchor": "left", "thickness": 10, "len": 0.9,
                                     "title": {"text": "p", "side": "top"}},
                           hovertemplate="layer %{x}<br>%{y}<br>p=%{z:.3f}<extra></extra>"),
                row=1, col=i,
            )
            fig.update_xaxes(title_text="layer", row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(
            title=title or f"p({visible(self.target)}) after {self.prompt!r}: clean {self.high_score:.3f}, "
                           f"corrupted {self.low_score:.3f} ({self.method}, {self.samples} samples)",
            height=max(300, 32 * len(self.tokens) + 120), width=360 * n + 180,
        )
        return fig


def _json_table(t: Tensor) -> list[list[float | None]]:
    """A 2-D tensor as nested lists, NaN (untraced cells) as None so that the JSON stays standard."""
    return [[None if math.isnan(x) else x for x in row] for row in t.tolist()]


@dataclass
class FactsTraceResult:
    """Average indirect effects over many facts, by ROME's token classes and layer.

    ``class_effects[kind]`` is ``[len(TOKEN_CLASSES), n_layers]``: the mean over facts of
    ``score - low_score`` at the tokens of each class (a fact's classes with several tokens are
    averaged first; facts without a class do not count for it, see ``class_counts``). The
    per-fact ``traces`` are kept (their scores are small) for inspection and plotting.
    """

    kinds: list[str]
    class_effects: dict[str, Float[Tensor, "classes layer"]]
    class_counts: dict[str, int]
    traces: list[TraceResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_facts(self) -> int:
        return len(self.traces)

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.class_effects.values())).shape[1])

    def effect(self, kind: str, token_class: str) -> Float[Tensor, " layer"]:
        """Mean indirect effect per layer of ``kind`` at ``token_class`` (e.g. ``"last_subject"``)."""
        if token_class not in TOKEN_CLASSES:
            raise ValueError(f"unknown token class {token_class!r}; valid: {', '.join(TOKEN_CLASSES)}")
        if kind not in self.class_effects:
            raise ValueError(f"kind {kind!r} was not traced; traced: {', '.join(self.class_effects)}")
        return self.class_effects[kind][TOKEN_CLASSES.index(token_class)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds,
            "token_classes": list(TOKEN_CLASSES),
            "class_effects": {k: _json_table(v) for k, v in self.class_effects.items()},
            "class_counts": self.class_counts,
            "n_facts": self.n_facts,
            "facts": [{"prompt": t.prompt, "subject": t.subject, "target": t.target, "low_score": t.low_score,
                       "high_score": t.high_score, "peak": {k: t.peak(k) for k in t.scores}} for t in self.traces],
            "settings": self.settings,
            "seconds": self.seconds,
        }

    def save(self, path: str | Path) -> Path:
        meta = self.to_dict()
        meta.pop("class_effects")
        meta["traces"] = [{k: v for k, v in t.to_dict().items() if k != "scores"} for t in self.traces]
        arrays = {f"class_effects.{k}": v for k, v in self.class_effects.items()}
        for i, t in enumerate(self.traces):
            arrays.update({f"trace.{i}.{k}": v for k, v in t.scores.items()})
        return save_dir(path, "trace_facts", meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> FactsTraceResult:
        meta, arrays = load_dir(path, "trace_facts")
        traces = []
        for i, m in enumerate(meta["traces"]):
            traces.append(TraceResult(
                prompt=m["prompt"], subject=m["subject"], tokens=list(m["tokens"]),
                subject_range=tuple(m["subject_range"]), target=m["target"], target_id=int(m["target_id"]),
                scores={k: arrays[f"trace.{i}.{k}"] for k in m["kinds"]}, low_score=float(m["low_score"]),
                high_score=float(m["high_score"]), samples=int(m["samples"]), noise=m["noise"],
                noise_std=float(m["noise_std"]), window=int(m["window"]), seed=int(m["seed"]), method=m["method"],
                seconds=float(m["seconds"]), forward_passes=int(m["forward_passes"]), model_name=m.get("model", ""),
                fingerprint=m.get("fingerprint", "")))
        return cls(kinds=list(meta["kinds"]), class_effects={k: arrays[f"class_effects.{k}"] for k in meta["kinds"]},
                   class_counts=dict(meta["class_counts"]), traces=traces, settings=dict(meta["settings"]),
                   seconds=float(meta["seconds"]))

    def figure(self) -> Any:
        """ROME's summary figure: average indirect effect, token class x layer, one panel per kind."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        labels = [f"{TOKEN_CLASS_LABELS[c]} (n={self.class_counts.get(c, 0)})" for c in TOKEN_CLASSES]
        colors = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
        fig = make_subplots(rows=1, cols=len(self.kinds), subplot_titles=[f"Average indirect effect: {k}"
                                                                           for k in self.kinds],
                            shared_yaxes=True, horizontal_spacing=0.06)
        for i, kind in enumerate(self.kinds, 1):
            z = self.class_effects[kind]
            fig.add_trace(go.Heatmap(z=z.tolist(), x=list(range(z.shape[1])), y=labels, showscale=False,
                                     colorscale=colors.get(kind.split("_")[-1], "Purples"),
                                     hovertemplate="layer %{x}<br>%{y}<br>AIE=%{z:.4f}<extra></extra>"),
                          row=1, col=i)
            fig.update_xaxes(title_text="layer", row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(title=f"Causal traces averaged over {self.n_facts} facts", height=380,
                          width=360 * len(self.kinds) + 260)
        return fig


def aggregate(traces: Sequence[TraceResult], settings: dict[str, Any] | None = None,
              seconds: float = 0.0) -> FactsTraceResult:
    """Average the indirect effects of many traces by token class (ROME's summary)."""
    if not traces:
        raise ValueError("no traces to aggregate")
    kinds = traces[0].kinds
    n = traces[0].n_layers
    sums = {k: torch.zeros(len(TOKEN_CLASSES), n) for k in kinds}
    counts = dict.fromkeys(TOKEN_CLASSES, 0)
    for tr in traces:
        if tr.kinds != kinds or tr.n_layers != n:
            raise ValueError("traces to aggregate must have the same kinds and layer count")
        classes = tr.token_classes()
        for ci, c in enumerate(TOKEN_CLASSES):
            rows = [t for t in classes[c] if not bool(torch.isnan(tr.scores[kinds[0]][t]).any())]
            if not rows:  # the class does not occur in this prompt, or was not traced
                continue
            counts[c] += 1
            for k in kinds:
                sums[k][ci] += tr.indirect_effect(k)[rows].mean(0)
    effects = {k: sums[k] / torch.tensor([max(1, counts[c]) for c in TOKEN_CLASSES]).unsqueeze(1) for k in kinds}
    return FactsTraceResult(kinds=list(kinds), class_effects=effects, class_counts=counts, traces=list(traces),
                            settings=dict(settings or {}), seconds=seconds)


@dataclass
class LayerChoice:
    """The layer (ROME) or layer window (MEMIT) to edit, with the evidence it was chosen on.

    ``effect_by_layer[L]`` is the mean indirect effect of restoring ``kind`` at the last subject
    token with layer ``L`` (for mlp/attn: the window centred on ``L``), over ``n_facts`` facts.
    """

    layer: int
    layers: list[int]
    kind: str
    effect_by_layer: list[float]
    n_facts: int
    facts: list[str] = field(default_factory=list)
    window: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "layers": self.layers, "kind": self.kind, "window": self.window,
                "effect_by_layer": self.effect_by_layer, "n_facts": self.n_facts, "facts": self.facts,
                "settings": self.settings}

    def save(self, path: str | Path) -> Path:
        meta = self.to_dict()
        meta["trace_kind"] = meta.pop("kind")  # "kind" names the result type in a result directory
        effects = torch.tensor(meta.pop("effect_by_layer"), dtype=torch.float32)
        return save_dir(path, "layer_choice", meta, {"effect_by_layer": effects})

    @classmethod
    def load(cls, path: str | Path) -> LayerChoice:
        meta, arrays = load_dir(path, "layer_choice")
        return cls(layer=int(meta["layer"]), layers=[int(x) for x in meta["layers"]], kind=meta["trace_kind"],
                   effect_by_layer=arrays["effect_by_layer"].tolist(), n_facts=int(meta["n_facts"]),
                   facts=list(meta["facts"]), window=meta["window"], settings=dict(meta["settings"]))

    def figure(self) -> Any:
        """Bar chart of the evidence, the chosen layers highlighted."""
        import plotly.graph_objects as go

        colors = ["#2ca02c" if i in self.layers else "#c7c7c7" for i in range(len(self.effect_by_layer))]
        fig = go.Figure(go.Bar(x=list(range(len(self.effect_by_layer))), y=self.effect_by_layer,
                               marker_color=colors))
        fig.update_layout(title=f"{self.kind} indirect effect at the last subject token ({self.n_facts} facts): "
                                f"layer {self.layer}", xaxis_title="layer", yaxis_title="average indirect effect")
        return fig


def choose_layers(effect_by_layer: Sequence[float], window: int | None) -> tuple[int, list[int]]:
    """The best layer, and ``window`` consecutive layers centred on it (shifted to fit the model)."""
    effects = list(effect_by_layer)
    best = max(range(len(effects)), key=lambda i: effects[i])
    if window is None:
        return best, [best]
    if not isinstance(window, int) or window < 1 or window > len(effects):
        raise ValueError(f"window must be an integer in 1..{len(effects)} (the layer count), got {window!r}")
    start = min(max(0, best - window // 2), len(effects) - window)
    return best, list(range(start, start + window))


def _trace_headline(m: dict[str, Any]) -> str:
    peak = (m.get("peak") or {}).get("mlp") or {}
    return (f"{m.get('prompt')!r} -> {m.get('target')!r}: clean {fmt(m.get('high_score'))}, "
            f"corrupted {fmt(m.get('low_score'))}" + (f", MLP peak layer {peak['layer']}" if peak else ""))


register("trace", TraceResult.load, _trace_headline)
register("trace_facts", FactsTraceResult.load,
         lambda m: f"{len(m.get('facts', m.get('prompts', [])) or [])} facts, kinds {m.get('kinds')}")
register("layer_choice", LayerChoice.load,
         lambda m: f"layer {m.get('layer')} ({m.get('trace_kind')} effect over {m.get('n_facts')} facts)")
