"""EditMetrics: an edited model's scores on some facts, under three labelled protocols.

* ``counterfact`` — probability comparisons (ROME / MEMIT papers): efficacy, paraphrase and
  neighbourhood scores and magnitudes, fluency, and ``relation_specificity_score`` (share of the
  subject's other-relation prompts whose true answer still beats the edit's new target);
* ``easyedit`` — teacher-forced token accuracies (EasyEdit / KnowEdit): rewrite, rephrase, locality,
  portability, and ``relation_specificity`` (tokens of the subject's other-relation answers that are
  still the unedited model's argmax);
* ``generation`` — greedy decoding, what a user reads (:mod:`.generation`): ``gen_efficacy``,
  ``gen_paraphrase``, ``gen_portability`` (the continuation begins with the answer) and
  ``gen_neighborhood``, ``gen_locality``, ``gen_relation_specificity`` (the continuation is the
  unedited model's).

``None`` means not measured: no prompt of that kind (a run without relation-specificity prompts has
``relation_specificity=None``, never 1.0), or no unedited reference to compare with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowscope.editing.memory import routing_figure
from knowscope.results import fmt, load_dir, register, save_dir

CF_KEYS = ("efficacy_score", "efficacy_magnitude", "paraphrase_score", "paraphrase_magnitude",
           "neighborhood_score", "neighborhood_magnitude", "relation_specificity_score", "fluency")
EE_KEYS = ("rewrite_acc", "rephrase_acc", "locality_acc", "relation_specificity", "portability_acc")
GEN_KEYS = ("gen_efficacy", "gen_paraphrase", "gen_neighborhood", "gen_locality", "gen_relation_specificity",
            "gen_portability")
# specificity over every neighbourhood / locality prompt, including those an edit is supposed to change
UNFILTERED_KEYS = ("neighborhood_score_all", "neighborhood_magnitude_all", "locality_acc_all")
ALL_KEYS = CF_KEYS + EE_KEYS + GEN_KEYS + UNFILTERED_KEYS
#: the keys that are scores in [0, 1] (magnitudes are signed differences; fluency is in bits)
SCORE_KEYS = tuple(k for k in ALL_KEYS if "magnitude" not in k and k != "fluency")
PROTOCOLS = {"counterfact": CF_KEYS, "easyedit": EE_KEYS, "generation": GEN_KEYS, "unfiltered": UNFILTERED_KEYS}


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class EditMetrics:
    """Metrics of an edited model on some facts (module docstring); ``None`` = not measured.

    ``per_fact`` holds each fact's own values (same keys) plus ``p_new`` / ``p_true`` of the rewrite
    prompt, prompt counts and, with generation, each prompt's text before and after (``prompts``).
    ``notes`` says how the numbers were obtained (references, settings, prompts kept and dropped).
    """

    n_facts: int
    values: dict[str, float | None] = field(default_factory=dict)
    per_fact: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.values) - set(ALL_KEYS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(ALL_KEYS)}")
        self.values = {k: self.values.get(k) for k in ALL_KEYS}

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in ALL_KEYS:
            return values.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def protocol(self, name: str) -> dict[str, float | None]:
        """One protocol's metrics: ``counterfact``, ``easyedit``, ``generation`` or ``unfiltered``."""
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
        return {k: self.values[k] for k in PROTOCOLS[name]}

    def counterfact(self) -> dict[str, float | None]:
        return self.protocol("counterfact")

    def easyedit(self) -> dict[str, float | None]:
        return self.protocol("easyedit")

    def generation(self) -> dict[str, float | None]:
        return self.protocol("generation")

    def unfiltered(self) -> dict[str, float | None]:
        return self.protocol("unfiltered")

    def flat(self) -> dict[str, float | None]:
        """All metrics in one flat dict (the CLI's ``metrics`` field)."""
        return dict(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"n_facts": self.n_facts, **{p: self.protocol(p) for p in PROTOCOLS}, "notes": self.notes,
                "per_fact": self.per_fact}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditMetrics:
        values = {k: v for p in PROTOCOLS for k, v in (d.get(p) or {}).items() if k in ALL_KEYS}
        return cls(int(d["n_facts"]), values, list(d.get("per_fact", [])), dict(d.get("notes", {})))

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], notes: dict[str, Any] | None = None) -> EditMetrics:
        """Aggregate per-fact rows (as in ``per_fact``): each metric is the mean over the facts that have it.

        This is how per-fact evaluations (one edit per fact, undone in between) combine into one result.
        """
        rows = list(rows)
        if not rows:
            raise ValueError("no per-fact rows to aggregate")
        return cls(len(rows), {k: mean(r.get(k) for r in rows) for k in ALL_KEYS}, rows, dict(notes or {}))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the metrics as ``meta.json`` in directory ``path`` (no arrays)."""
        return save_dir(path, "edit_metrics", self.to_dict(), {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EditMetrics:
        meta, _ = load_dir(path, "edit_metrics")
        return cls.from_dict(meta)

    def prompts(self) -> list[dict[str, Any]]:
        """Per prompt (with generation): fact, kind, prompt, answer, text before and after, success."""
        return [{"case_id": row.get("case_id"), "subject": row.get("subject"), **p}
                for row in self.per_fact for p in row.get("prompts") or []]

    def figure(self) -> Any:
        """Scores in [0, 1] by protocol (zeros drawn as zero-height bars and labelled); magnitudes and
        fluency, which are not scores, are in the title."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for label, name in (("CounterFact", "counterfact"), ("EasyEdit", "easyedit"), ("Generation", "generation")):
            keys = [k for k, v in self.protocol(name).items() if v is not None and k in SCORE_KEYS]
            ys = [self.values[k] for k in keys]
            fig.add_bar(name=label, x=keys, y=ys, text=[f"{y:.2f}" for y in ys], textposition="outside")
        extra = [f"{k} {self.values[k]:+.3f}" for k in ("efficacy_magnitude", "neighborhood_magnitude")
                 if self.values[k] is not None]
        if self.values["fluency"] is not None:
            extra.append(f"fluency {self.values['fluency']:.2f} bits")
        fig.update_layout(title=f"Edit metrics on {self.n_facts} facts" + (f" ({', '.join(extra)})" if extra else ""),
                          yaxis_title="score (0-1)", yaxis_range=[0, 1.1])
        return fig

    def routing(self) -> list[dict[str, Any]]:
        """Per prompt, how a side memory routed it (fact, kind, prompt, memory, score, threshold, routed);
        empty when no side memory was attached."""
        return [{"case_id": row.get("case_id"), "subject": row.get("subject"), "kind": kind, **r}
                for row in self.per_fact for kind, routes in (row.get("routing") or {}).items() for r in routes]

    def routing_figure(self) -> Any:
        """Routing margins of the edited, paraphrase and neighbour prompts (None without a side memory;
        :func:`knowscope.editing.memory.routing_figure`)."""
        rows = self.routing()
        return routing_figure(rows, (self.notes.get("routing") or {}).get("memory", "")) if rows else None

    def summary(self) -> str:
        """One line per protocol, for printing."""
        def line(d: dict[str, float | None]) -> str:
            return "  ".join(f"{k}={v:.3f}" for k, v in d.items() if v is not None)

        return "\n".join(f"{label:<12} {line(self.protocol(name))}" for label, name in
                         (("CounterFact:", "counterfact"), ("EasyEdit:", "easyedit"), ("Generation:", "generation")))


def _metrics_headline(m: dict[str, Any]) -> str:
    cf, gen = m.get("counterfact") or {}, m.get("generation") or {}
    return (f"{m.get('n_facts')} facts: efficacy {fmt(cf.get('efficacy_score'))}, paraphrase "
            f"{fmt(cf.get('paraphrase_score'))}, neighbourhood {fmt(cf.get('neighborhood_score'))}, "
            f"generation efficacy {fmt(gen.get('gen_efficacy'))}")


register("edit_metrics", EditMetrics.load, _metrics_headline)
