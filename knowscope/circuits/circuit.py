"""Knowledge circuits: the :class:`Circuit` result object and :func:`knowledge_circuit`, the one call that finds one.

:func:`knowledge_circuit` is the one-call entry point: it builds clean / corrupted inputs for a
batch of facts of one relation (:func:`knowscope.circuits.batches.make_batch`), scores every edge with
EAP or EAP-IG (:func:`knowscope.circuits.eap.attribute`), measures the faithfulness of circuits of
growing size by exact edge patching
(:func:`~knowscope.circuits.pruning.faithfulness_curve`), and keeps either the top-n edges
or the smallest circuit that reaches a target faithfulness.

Pruning and faithfulness live in :mod:`knowscope.circuits.pruning`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from knowscope.circuits import eap
from knowscope.circuits.batches import CircuitBatch, CircuitMetric, Corruption, make_batch
from knowscope.circuits.graph import Graph
from knowscope.circuits.graphview import graph_figure, graph_json
from knowscope.circuits.pruning import default_sizes, faithfulness_curve, normalized_faithfulness, prune
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.results import fmt, load_dir, register, save_dir
from knowscope.work import OnUnit

logger = logging.getLogger(__name__)

KIND = "circuit"


# --------------------------------------------------------------------------------------------
# the result object


@dataclass
class Circuit:
    """A scored edge graph and the edges kept as the circuit, with how faithful that circuit is.

    ``scores[u, v]`` is the edge score (0 where no edge), ``mask[u, v]`` circuit membership.
    ``node_dla`` (optional) holds, per forward node, the direct logit attribution of its output at
    the last token to the scored answer (row 0) and to the fact's ``target_new`` (row 1),
    averaged over the batch; :mod:`knowscope.circuits.diff` uses it.
    """

    graph: Graph
    scores: Float[Tensor, "n_forward n_slots"]
    mask: Bool[Tensor, "n_forward n_slots"]
    metric_clean: float = float("nan")
    metric_corrupted: float = float("nan")
    metric_circuit: float = float("nan")
    faithfulness: float = float("nan")
    curve: dict[str, list[float]] = field(default_factory=dict)
    node_dla: Float[Tensor, "2 n_forward"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # --- views ---------------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def n_edges_total(self) -> int:
        return self.graph.n_edges

    def node_mask(self) -> Bool[Tensor, " n_forward"]:
        """Forward nodes with at least one circuit edge leaving them."""
        return self.mask.any(dim=1)

    def nodes(self) -> list[str]:
        """Names of the circuit's nodes (forward nodes it uses, plus ``logits`` if any edge reaches it)."""
        names = [self.graph.node_names[u] for u in self.node_mask().nonzero().flatten().tolist()]
        if bool(self.mask[:, self.graph.logits_slot].any()):
            names.append("logits")
        return names

    def edges(self, include_all: bool = False) -> list[dict[str, Any]]:
        """Circuit edges (or all edges) as ``{"source", "target", "kind", "score", "in_circuit"}``, by ``|score|``."""
        sel = self.graph.edge_mask if include_all else self.mask
        us, vs = sel.nonzero(as_tuple=True)
        g = self.graph
        rows = [
            {
                "source": g.node_names[u],
                "target": g.slot_names[v],
                "kind": g.slot_kind[v],
                "score": float(self.scores[u, v]),
                "in_circuit": bool(self.mask[u, v]),
            }
            for u, v in zip(us.tolist(), vs.tolist(), strict=True)
        ]
        return sorted(rows, key=lambda r: -abs(r["score"]))

    def with_mask(self, mask: Tensor) -> Circuit:
        """The same scores with another edge selection (faithfulness fields are reset)."""
        return Circuit(graph=self.graph, scores=self.scores, mask=mask.bool(), curve=self.curve,
                       metric_clean=self.metric_clean, metric_corrupted=self.metric_corrupted,
                       node_dla=self.node_dla, meta=dict(self.meta))

    def to_dict(self, max_edges: int | None = None) -> dict[str, Any]:
        edges = self.edges()
        return {
            "n_edges_total": self.n_edges_total,
            "n_edges_circuit": self.n_edges,
            "faithfulness": self.faithfulness,
            "metric_clean": self.metric_clean,
            "metric_corrupted": self.metric_corrupted,
            "metric_circuit": self.metric_circuit,
            "nodes": self.nodes(),
            "edges": edges if max_edges is None else edges[:max_edges],
            "curve": self.curve,
            "graph": self.graph.to_dict(),
            **self.meta,
        }

    # --- networkx / plotly ---------------------------------------------------------------------
    def to_networkx(self) -> Any:
        """A ``networkx.MultiDiGraph`` of the circuit: node -> node edges, one per slot read
        (attributes ``qkv`` in q / k / v / mlp / logits, ``score``, ``slot``).

        A KV-slot edge of a GQA model becomes one edge to each query head of its group that is
        in the circuit.
        """
        import networkx as nx

        g = self.graph
        dg = nx.MultiDiGraph()
        used = self.node_mask()
        for u in used.nonzero().flatten().tolist():
            dg.add_node(g.node_names[u], kind=g.node_kind[u], layer=int(g.node_layer[u]))
        for u, v in self.mask.nonzero().tolist():
            kind = g.slot_kind[v]
            if kind == "logits":
                targets = ["logits"]
                dg.add_node("logits", kind="logits", layer=g.n_layers)
            else:
                owners = g.slot_owner[v].nonzero().flatten().tolist()
                inside = [w for w in owners if used[w]] or owners
                targets = [g.node_names[w] for w in inside]
                for w, name in zip(inside, targets, strict=True):
                    dg.add_node(name, kind=g.node_kind[w], layer=int(g.node_layer[w]))
            for t in targets:
                dg.add_edge(g.node_names[u], t, key=g.slot_names[v], qkv=kind, score=float(self.scores[u, v]),
                            slot=g.slot_names[v])
        return dg

    def figure(self, max_edges: int | None = None, pinned: str | None = None) -> Any:
        """The layered, explorable graph of :func:`knowscope.circuits.graphview.graph_figure`: every
        circuit edge (or the ``max_edges`` strongest), binned by sign and weight, with node hover cards;
        ``pinned`` highlights one node's edges."""
        return graph_figure(self, max_edges=max_edges, pinned=pinned)

    def to_graph_json(self) -> dict[str, Any]:
        """Nodes, edges, scores and metadata in the documented ``knowscope.circuit_graph`` schema."""
        return graph_json(self)

    def curve_figure(self) -> Any:
        """Faithfulness against circuit size (percent of edges)."""
        import plotly.graph_objects as go

        if not self.curve:
            raise ValueError("this circuit has no faithfulness curve (compute one with faithfulness_curve)")
        fig = go.Figure(go.Scatter(x=[100 * f for f in self.curve["fraction"]], y=self.curve["faithfulness"],
                                   mode="lines+markers"))
        fig.update_layout(xaxis_title="edges in circuit (%)", yaxis_title="normalised faithfulness", xaxis_type="log")
        return fig

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``meta.json`` + ``arrays.safetensors`` (scores, mask, node DLA) atomically."""
        arrays = {"scores": self.scores.float(), "mask": self.mask.to(torch.uint8)}
        if self.node_dla is not None:
            arrays["node_dla"] = self.node_dla.float()
        meta = {
            "graph": self.graph.to_dict(),
            "metric_clean": self.metric_clean,
            "metric_corrupted": self.metric_corrupted,
            "metric_circuit": self.metric_circuit,
            "faithfulness": self.faithfulness,
            "curve": self.curve,
            "meta": self.meta,
        }
        return save_dir(path, KIND, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        meta, arrays = load_dir(path, KIND)
        graph = Graph.from_dict(meta["graph"])
        scores, mask = arrays["scores"], arrays["mask"].bool()
        if tuple(scores.shape) != (graph.n_forward, graph.n_slots) or scores.shape != mask.shape:
            raise ValueError(f"{path}: arrays do not match the graph {graph.to_dict()}")
        return cls(graph=graph, scores=scores, mask=mask, metric_clean=meta["metric_clean"],
                   metric_corrupted=meta["metric_corrupted"], metric_circuit=meta["metric_circuit"],
                   faithfulness=meta["faithfulness"], curve=meta.get("curve", {}),
                   node_dla=arrays.get("node_dla"), meta=meta.get("meta", {}))


# --------------------------------------------------------------------------------------------
# one call


def final_norm_scale(model: Model, batch: CircuitBatch) -> Float[Tensor, "batch 1"]:
    """The final norm's scale (``ln_final.hook_scale``) at each example's last token, clean run."""
    _, cache = model.bridge.run_with_cache(batch.clean.to(model.device),
                                           names_filter=lambda n: n == "ln_final.hook_scale")
    rows = torch.arange(batch.size, device=model.device)
    return cache["ln_final.hook_scale"][rows, batch.last.to(model.device)].float()


def through_final_norm(model: Model, x: Float[Tensor, "... d_model"], scale: Tensor) -> Float[Tensor, "... d_model"]:
    """A component's output as the final norm passes it on with a frozen ``scale``: centred first
    (LayerNorm only), times the norm's weight, divided by ``scale`` (broadcast against ``x``)."""
    ln = model.bridge.ln_final.original_component
    x = x.float()
    if not hasattr(ln, "variance_epsilon") and getattr(ln, "bias", None) is not None:
        x = x - x.mean(-1, keepdim=True)
    if getattr(ln, "weight", None) is not None:
        x = x * ln.weight.float().to(x.device)
    return x / scale.to(x.device)


def node_logit_attribution(
    model: Model, graph: Graph, batch: CircuitBatch, outputs: Tensor | None = None,
    token_ids: Tensor | None = None, scale: Tensor | None = None,
) -> Float[Tensor, "batch n_forward"]:
    """Direct logit attribution of every forward node's output at the last token.

    Each output is passed through the final norm's weight, divided by the final norm's scale
    of the clean run (centred first for LayerNorm), and read through the unembedding at
    ``token_ids`` (default: the batch's answers); output minus the mean over the vocabulary.
    """
    if outputs is None:
        outputs, _ = eap.record_outputs(model, graph, batch.clean)
    ids = batch.answer if token_ids is None else token_ids
    rows = torch.arange(batch.size, device=outputs.device)
    last = outputs[rows, batch.last.to(outputs.device)].float()  # [batch, node, d]
    if scale is None:
        scale = final_norm_scale(model, batch)  # [batch, 1]
    x = through_final_norm(model, last, scale[:, None, :])
    unembed = model.hf.get_output_embeddings().weight.float()  # [vocab, d]
    col = unembed[ids.to(unembed.device)]  # [batch, d]
    direct = torch.einsum("bnd,bd->bn", x, col)
    mean = torch.einsum("bnd,d->bn", x, unembed.mean(0))
    return (direct - mean).cpu()


def knowledge_circuit(
    model: Model,
    facts: Sequence[Fact] | CircuitBatch,
    *,
    method: eap.CircuitMethod = "eap-ig",
    ig_steps: int = 5,
    metric: CircuitMetric = "logit_diff",
    corruption: Corruption = "swap",
    contrast_subjects: Sequence[str | None] | None = None,
    pool: Sequence[Fact] | None = None,
    target: str = "true",
    top_n: int | None = None,
    threshold: float | None = None,
    greedy: int | None = None,
    target_faithfulness: float = 0.8,
    sizes: Sequence[int] | None = None,
    seed: int = 0,
    on_unit: OnUnit | None = None,
    step: Callable[[str], None] | None = None,
) -> Circuit:
    """Find the knowledge circuit of a batch of facts (one relation).

    Without ``top_n`` / ``threshold`` / ``greedy``, the circuit is the smallest top-n circuit on
    the faithfulness curve (``sizes``, default :func:`~knowscope.circuits.pruning.default_sizes`) whose normalised
    faithfulness reaches ``target_faithfulness`` (the largest size if none does).

    ``seed`` draws the corruption (the noise of ``"noise"``, the order swap subjects are tried in for
    ``"swap"``): two seeds give two samples of the same circuit (:func:`~knowscope.circuits.diff.noise_floor`).
    ``on_unit(done, total)`` is called after each unit of work: every gradient pass of the attribution,
    every size of the faithfulness curve, the final patched run (:func:`circuit_units` counts them).
    ``step(text)`` is called before each stage (edge scores, the faithfulness curve, the circuit's own
    metric): progress lines for callers.
    """
    start = time.perf_counter()
    tick = step or (lambda text: None)
    batch = facts if isinstance(facts, CircuitBatch) else make_batch(
        model, facts, corruption, contrast_subjects=contrast_subjects, pool=pool, target=target, seed=seed)
    graph = Graph.from_model(model)
    if not 0 < target_faithfulness <= 1.5:
        raise ValueError(f"target_faithfulness must be in (0, 1.5], got {target_faithfulness!r}")
    tick(f"{method} scores of {graph.n_edges:,} edges on {batch.size} prompt(s)"
         + (f" ({ig_steps} integrated-gradient steps)" if method == "eap-ig" else ""))
    explicit = any(v is not None for v in (top_n, threshold, greedy))
    total = circuit_units(graph.n_edges, method, ig_steps, sizes, explicit)
    steps = 1 if method == "eap" else ig_steps

    def unit(offset: int) -> OnUnit | None:
        return None if on_unit is None else (lambda done, _n: on_unit(offset + done, total))

    attribution = eap.attribute(model, batch, method, ig_steps=ig_steps, metric=metric, graph=graph,
                                on_unit=unit(0))
    if not explicit or sizes is not None:
        tick("faithfulness curve: the clean prompts run with every edge outside each candidate circuit patched")
    curve = faithfulness_curve(model, attribution, batch, sizes, on_unit=unit(steps)) \
        if (not explicit or sizes is not None) else {}
    if explicit:
        mask = prune(graph, attribution.scores, top_n=top_n, threshold=threshold, greedy=greedy)
    else:
        ok = [i for i, f in enumerate(curve["faithfulness"]) if f >= target_faithfulness]
        pick = ok[0] if ok else len(curve["faithfulness"]) - 1
        mask = prune(graph, attribution.scores, top_n=curve["n_edges_requested"][pick])
    tick("the chosen circuit's metric and its nodes' direct logit attribution")
    m_circ = eap.patched_metric(model, graph, batch, mask, metric, attribution.corrupted_outputs)
    if on_unit is not None:
        on_unit(total, total)
    clean_out = attribution.clean_outputs
    scale = final_norm_scale(model, batch)
    dla = torch.stack([
        node_logit_attribution(model, graph, batch, clean_out, scale=scale).mean(0),
        node_logit_attribution(model, graph, batch, clean_out, token_ids=batch.new_answer, scale=scale).mean(0),
    ])
    circuit = Circuit(
        graph=graph,
        scores=attribution.scores,
        mask=mask,
        metric_clean=float(attribution.metric_clean.mean()),
        metric_corrupted=float(attribution.metric_corrupted.mean()),
        metric_circuit=float(m_circ.mean()),
        faithfulness=normalized_faithfulness(m_circ, attribution.metric_clean, attribution.metric_corrupted),
        curve=curve,
        node_dla=dla,
        meta={
            "model": getattr(model, "name", None),
            "fingerprint": getattr(model, "fingerprint", None),
            "method": method,
            "ig_steps": attribution.ig_steps,
            "metric": metric,
            "target_faithfulness": target_faithfulness,
            "batch": batch.to_dict(),
            "seconds": time.perf_counter() - start,
        },
    )
    return circuit


def circuit_units(n_edges: int, method: str = "eap-ig", ig_steps: int = 5, sizes: Sequence[int] | None = None,
                  explicit: bool = False) -> int:
    """How many units of work :func:`knowledge_circuit` reports: one gradient pass per integrated-gradient
    step (one for EAP), one patched run per curve size (none for an explicit size without ``sizes``), and
    the final patched run."""
    passes = 1 if method == "eap" else int(ig_steps)
    n_sizes = 0 if (explicit and sizes is None) else len(list(sizes) if sizes is not None else default_sizes(n_edges))
    return passes + n_sizes + 1


def _headline(m: dict[str, Any]) -> str:
    inner = m.get("meta") or {}
    batch = inner.get("batch") or {}
    rel = ",".join(batch.get("relations") or [])
    return (f"{inner.get('method', '?')} circuit{' of ' + rel if rel else ''}: faithfulness "
            f"{fmt(m.get('faithfulness'), '.2f')}, {len(batch.get('prompts') or [])} prompts")


register(KIND, Circuit.load, _headline)
