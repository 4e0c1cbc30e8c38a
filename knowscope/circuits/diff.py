"""Circuit diff: the circuit of one fact before and after an edit.

Given two :class:`~knowscope.circuits.circuit.Circuit` objects over the same graph (usually the
same facts, scored on the model before and after a ROME / MEMIT edit), :func:`circuit_diff` lists

* **gained** edges (in the after-circuit only) and **lost** edges (in the before-circuit only);
* **re-weighted** edges (in both, with a sign flip or ``|after - before|`` at least
  ``reweight_ratio`` of the larger magnitude);
* **new carriers of target_new**: nodes of the after-circuit whose direct logit attribution to the
  fact's ``target_new`` grew by at least ``min_dla_gain`` and is positive after the edit.

A circuit is itself a sample: its corrupted inputs are drawn (the noise, or the swapped-in subject),
so two runs on the *unedited* model with another ``seed`` already differ by some edges.
:func:`noise_floor` measures that diff, and ``circuit_diff(before, after, floor=...)`` reads the edit's
diff against it: the summary adds the floor's counts and the counts **beyond the floor**
(``n_lost - floor n_lost``, at least 0; likewise gained), and each gained / lost edge says whether it
also changed between the two unedited samples (``"flaky"``). "215 of 320 edges lost" after an edit
means little when two unedited samples already differ by 200.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from knowscope.circuits.batches import CircuitBatch
from knowscope.circuits.circuit import Circuit, knowledge_circuit
from knowscope.facts import Fact
from knowscope.results import fmt, load_dir, register, save_dir

KIND = "circuit_diff"


@dataclass
class CircuitDiff:
    """Edges gained, lost and re-weighted, and the nodes that now carry ``target_new``."""

    gained: list[dict[str, Any]]
    lost: list[dict[str, Any]]
    reweighted: list[dict[str, Any]]
    new_carriers: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "gained": self.gained, "lost": self.lost, "reweighted": self.reweighted,
                "new_carriers": self.new_carriers}

    def figure(self, top: int = 30) -> Any:
        """Score before vs after for the most changed edges (gained, lost, re-weighted)."""
        import plotly.graph_objects as go

        rows = [(r, "gained") for r in self.gained] + [(r, "lost") for r in self.lost] + \
               [(r, "reweighted") for r in self.reweighted]
        rows.sort(key=lambda t: -abs(t[0]["after"] - t[0]["before"]))
        rows = rows[:top]
        names = [r["edge"] for r, _ in rows]
        fig = go.Figure([
            go.Bar(x=names, y=[r["before"] for r, _ in rows], name="before"),
            go.Bar(x=names, y=[r["after"] for r, _ in rows], name="after"),
        ])
        s = self.summary
        floor = (f" (noise floor {s['noise_floor']['n_gained']} / {s['noise_floor']['n_lost']})"
                 if s.get("noise_floor") else "")
        fig.update_layout(barmode="group", yaxis_title="edge score", title=(
            f"circuit diff: {len(self.gained)} gained, {len(self.lost)} lost{floor}, {len(self.reweighted)} "
            "re-weighted"))
        return fig

    def save(self, path: str | Path) -> Path:
        return save_dir(path, KIND, self.to_dict(), {})

    @classmethod
    def load(cls, path: str | Path) -> CircuitDiff:
        meta, _ = load_dir(path, KIND)
        return cls(gained=meta["gained"], lost=meta["lost"], reweighted=meta["reweighted"],
                   new_carriers=meta["new_carriers"], summary=meta["summary"])


def circuit_diff(before: Circuit, after: Circuit, *, reweight_ratio: float = 0.5,
                 min_dla_gain: float = 0.5, floor: CircuitDiff | None = None) -> CircuitDiff:
    """Compare two circuits over the same graph (see the module docstring); ``floor`` (a
    :func:`noise_floor`) adds the counts beyond it."""
    if before.graph != after.graph:
        raise ValueError(f"circuits are over different graphs: {before.graph.to_dict()} vs {after.graph.to_dict()}")
    if not reweight_ratio > 0:
        raise ValueError(f"reweight_ratio must be > 0, got {reweight_ratio!r}")
    g = before.graph
    sb, sa = before.scores.float(), after.scores.float()
    mb, ma = before.mask.bool(), after.mask.bool()

    def rows(mask: torch.Tensor) -> list[dict[str, Any]]:
        us, vs = mask.nonzero(as_tuple=True)
        out = [{"edge": g.edge_name(u, v), "kind": g.slot_kind[v], "before": float(sb[u, v]), "after": float(sa[u, v])}
               for u, v in zip(us.tolist(), vs.tolist(), strict=True)]
        return sorted(out, key=lambda r: -abs(r["after"] - r["before"]))

    both = mb & ma
    change = (sa - sb).abs()
    big = torch.maximum(sa.abs(), sb.abs())
    rew = both & ((change >= reweight_ratio * big) | (torch.sign(sa) != torch.sign(sb)))
    carriers: list[dict[str, Any]] = []
    if before.node_dla is not None and after.node_dla is not None:
        gain = after.node_dla[1] - before.node_dla[1]
        used = after.node_mask()
        for u in ((gain >= min_dla_gain) & (after.node_dla[1] > 0) & used).nonzero().flatten().tolist():
            carriers.append({"node": g.node_names[u], "dla_new_before": float(before.node_dla[1, u]),
                             "dla_new_after": float(after.node_dla[1, u]), "gain": float(gain[u])})
        carriers.sort(key=lambda r: -r["gain"])
    summary = {
        "n_edges_before": int(mb.sum()), "n_edges_after": int(ma.sum()), "n_shared": int(both.sum()),
        "n_gained": int((ma & ~mb).sum()), "n_lost": int((mb & ~ma).sum()), "n_reweighted": int(rew.sum()),
        "jaccard": float(both.sum()) / max(1, int((mb | ma).sum())),
        "faithfulness_before": before.faithfulness, "faithfulness_after": after.faithfulness,
        "reweight_ratio": reweight_ratio, "min_dla_gain": min_dla_gain,
    }
    gained, lost = rows(ma & ~mb), rows(mb & ~ma)
    if floor is not None:
        fs = floor.summary
        summary["noise_floor"] = {k: fs.get(k) for k in ("n_edges_before", "n_edges_after", "n_gained", "n_lost",
                                                         "n_reweighted", "jaccard", "seeds")}
        summary["n_lost_beyond_floor"] = max(0, summary["n_lost"] - int(fs["n_lost"]))
        summary["n_gained_beyond_floor"] = max(0, summary["n_gained"] - int(fs["n_gained"]))
        flaky = {r["edge"] for r in floor.gained} | {r["edge"] for r in floor.lost}
        for r in gained + lost:
            r["flaky"] = r["edge"] in flaky
    return CircuitDiff(gained=gained, lost=lost, reweighted=rows(rew), new_carriers=carriers, summary=summary)


def noise_floor(model: Any, facts: Sequence[Fact], *, seeds: tuple[int, int] = (0, 1), base: Circuit | None = None,
                reweight_ratio: float = 0.5, **circuit_kwargs: Any) -> CircuitDiff:
    """The diff between two knowledge circuits of ``facts`` on the same (unedited) model that differ only in
    the corruption's ``seed`` (:func:`~knowscope.circuits.circuit.knowledge_circuit`, ``circuit_kwargs`` as
    there): how many edges sampling alone gains and loses. ``base`` is the circuit at ``seeds[0]`` when it
    was already computed (it must have been computed with that seed)."""
    if isinstance(facts, CircuitBatch):
        raise ValueError("a noise floor draws other corrupted inputs: give the facts, not a built CircuitBatch")
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise ValueError(f"seeds must be two different seeds, got {seeds!r}")
    if base is not None and (base.meta.get("batch") or {}).get("seed", seeds[0]) != seeds[0]:
        raise ValueError(f"base was computed with seed {base.meta['batch']['seed']}, not seeds[0]={seeds[0]}")
    a = base if base is not None else knowledge_circuit(model, facts, seed=seeds[0], **circuit_kwargs)
    b = knowledge_circuit(model, facts, seed=seeds[1], **circuit_kwargs)
    out = circuit_diff(a, b, reweight_ratio=reweight_ratio)
    out.summary["seeds"] = [int(seeds[0]), int(seeds[1])]
    return out


def _headline(m: dict[str, Any]) -> str:
    s = m.get("summary") or {}
    floor = s.get("noise_floor")
    beyond = (f" ({s.get('n_gained_beyond_floor')} gained, {s.get('n_lost_beyond_floor')} lost beyond the noise "
              f"floor)") if floor else ""
    return (f"{s.get('n_gained')} edges gained, {s.get('n_lost')} lost, {s.get('n_reweighted')} re-weighted{beyond}; "
            f"Jaccard {fmt(s.get('jaccard'), '.2f')}")


register(KIND, CircuitDiff.load, _headline)
