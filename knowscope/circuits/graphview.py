"""A circuit drawn for exploring, and exported for other tools: layout, hover cards, binned edges, JSON.

:func:`graph_figure` draws a circuit's edges (all of them by default) in a handful of plotly traces,
not one per edge: edges are binned by sign and by weight (quantiles of ``|score|``), each bin one
trace of line segments separated by gaps, so a figure of 7,000 edges builds in well under a second
and stays responsive in the browser. Each edge's hover card sits on an invisible marker at its middle,
in one WebGL trace (7,000 SVG markers would double the browser's first render; without WebGL the
edges still draw, only their cards are missing). Nodes sit on a grid: layer left to right, a layer's heads one
above the other and its MLP below them (half a layer on, as it reads the heads' output); the input
on the left, the logits on the right. The circuits here score edges between components summed over
token positions, so there is no position axis. The strongest nodes (and a pinned one) are named on the
graph, the others only on their cards, so labels do not overprint. Hovering a node shows its card (its score and its
strongest edges in and out); a node given as ``pinned`` is ringed and its edges are drawn on top.

:func:`graph_json` is the same graph as plain data (schema ``knowscope.circuit_graph``, version 1,
documented in docs/architecture.md "Circuit graph JSON"): nodes, edges, scores and metadata.

This module only reads a circuit (``graph``, ``scores``, ``mask``, ``meta`` and the headline numbers),
so :mod:`knowscope.circuits.circuit` can use it without an import cycle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.circuits.graph import Graph

SCHEMA = "knowscope.circuit_graph"
SCHEMA_VERSION = 1
SIGN_COLOURS = {"positive": (31, 119, 180), "negative": (214, 39, 40)}
BIN_QUANTILES = (0.5, 0.8, 0.95)  # edges above each quantile of |score| go to the next, heavier bin
BIN_WIDTHS = (0.6, 1.2, 2.4, 4.0)
BIN_OPACITY = (0.25, 0.4, 0.6, 0.85)
TOP_EDGES_ON_CARD = 3
LABELLED_NODES = 12  # only the strongest nodes are named on the graph (every node has its hover card)


def node_xy(graph: Graph) -> Float[Tensor, "n_forward_plus_logits 2"]:
    """Grid position of every forward node, and of the logits (last row)."""
    n, H = graph.n_forward, graph.n_heads
    xy = torch.zeros(n + 1, 2)
    layer = graph.node_layer.float()
    for u, kind in enumerate(graph.node_kind):
        if kind == "input":
            xy[u] = torch.tensor([-1.0, 0.0])
        elif kind == "mlp":
            xy[u] = torch.tensor([float(layer[u]) + 0.5, -(H + 1) / 2])
        else:
            head = u - graph.head_node(int(layer[u]), 0)
            xy[u] = torch.tensor([float(layer[u]), (H - 1) / 2 - head])
    xy[n] = torch.tensor([float(graph.n_layers), 0.0])
    return xy


def slot_xy(graph: Graph) -> Float[Tensor, "n_slots 2"]:
    """Where an edge into each slot ends: its node (a KV head's k / v slot: the middle of its group)."""
    xy = node_xy(graph)
    owner = graph.slot_owner.float()  # [slot, node]
    out = torch.zeros(graph.n_slots, 2)
    counts = owner.sum(1, keepdim=True)
    has = counts[:, 0] > 0
    out[has] = (owner[has] @ xy[: graph.n_forward]) / counts[has]
    out[graph.logits_slot] = xy[graph.n_forward]
    return out


def edge_list(circuit: Any, max_edges: int | None = None) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"],
                                                                     Float[Tensor, " n"]]:
    """The circuit's edges ``(u, v, score)``, strongest ``|score|`` first, at most ``max_edges``."""
    us, vs = circuit.mask.nonzero(as_tuple=True)
    scores = circuit.scores[us, vs].float()
    order = torch.sort(scores.abs(), descending=True, stable=True).indices
    if max_edges is not None:
        order = order[: max(0, int(max_edges))]
    return us[order], vs[order], scores[order]


def slot_targets(graph: Graph) -> list[list[str]]:
    """Per slot, the nodes that read it (a query head; every head of a KV group; the MLP; the logits)."""
    owner = graph.slot_owner
    out = [[graph.node_names[w] for w in owner[v].nonzero().flatten().tolist()] for v in range(graph.n_slots)]
    out[graph.logits_slot] = ["logits"]
    return out


def node_summary(circuit: Any) -> dict[str, dict[str, Any]]:
    """Per node of the circuit: kind, layer, head, score (sum of ``|score|`` of its circuit edges in and
    out) and its strongest edges in and out (``(other end, slot, score)``, by ``|score|``)."""
    g: Graph = circuit.graph
    mask, scores = circuit.mask, circuit.scores.float()
    owner = g.slot_owner
    # a node is in the circuit when an edge leaves it or enters its own query / MLP input (a KV
    # head's k / v inputs are shared by its group, so they alone do not put a head in)
    single = torch.tensor([k in ("q", "mlp") for k in g.slot_kind])
    used = mask.any(dim=1) | (owner & (mask.any(dim=0) & single)[:, None]).any(dim=0)
    out: dict[str, dict[str, Any]] = {}
    absval = (scores * mask).abs()
    for u in used.nonzero().flatten().tolist():
        kind = g.node_kind[u]
        layer = int(g.node_layer[u])
        slots = owner[:, u]
        own = slots.nonzero().flatten().tolist()
        in_scores = scores[:, slots] * mask[:, slots]  # [source node, this node's slots]
        top_in = [(g.node_names[a], g.slot_names[own[b]], v) for a, b, v in _top(in_scores)]
        top_out = [("logits" if b == g.logits_slot else g.slot_node_name(b), g.slot_names[b], v)
                   for _, b, v in _top(scores[u : u + 1] * mask[u : u + 1])]
        out[g.node_names[u]] = {
            "kind": kind, "layer": layer,
            "head": u - g.head_node(layer, 0) if kind == "head" else None,
            "score": float(absval[u].sum() + absval[:, slots].sum()),
            "n_in": int(mask[:, slots].sum()), "n_out": int(mask[u].sum()),
            "top_in": top_in, "top_out": top_out,
        }
    if bool(mask[:, g.logits_slot].any()):
        col = scores[:, g.logits_slot : g.logits_slot + 1] * mask[:, g.logits_slot : g.logits_slot + 1]
        out["logits"] = {"kind": "logits", "layer": g.n_layers, "head": None,
                         "score": float(col.abs().sum()), "n_in": int(mask[:, g.logits_slot].sum()), "n_out": 0,
                         "top_in": [(g.node_names[a], "logits", v) for a, _, v in _top(col)], "top_out": []}
    return out


def _top(block: Tensor) -> list[tuple[int, int, float]]:
    """``(row, column, value)`` of the ``TOP_EDGES_ON_CARD`` nonzero entries of ``block``, largest first."""
    flat = block.flatten()
    if not flat.numel():
        return []
    k = min(TOP_EDGES_ON_CARD, flat.numel())
    cols = block.shape[1]
    return [(i // cols, i % cols, float(flat[i])) for i in flat.abs().topk(k).indices.tolist() if float(flat[i]) != 0]


def _card(name: str, s: dict[str, Any]) -> str:
    where = {"head": f"head {s['head']}, layer {s['layer']}", "mlp": f"MLP, layer {s['layer']}",
             "input": "embeddings", "logits": "final norm and unembedding"}[s["kind"]]
    lines = [f"<b>{name}</b> ({where})", f"score Σ|edge| {s['score']:.4g}; edges in {s['n_in']}, out {s['n_out']}"]
    lines += [f"in  ← {a} ({slot}) {v:+.3g}" for a, slot, v in s["top_in"]]
    lines += [f"out → {b} ({slot}) {v:+.3g}" for b, slot, v in s["top_out"]]
    return "<br>".join(lines)


def weight_bins(absval: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
    """Bin of each edge by ``|score|``: 0 below the median ... 3 above the 95th percentile."""
    if not absval.numel():
        return torch.zeros(0, dtype=torch.long)
    cuts = torch.quantile(absval.double(), torch.tensor(BIN_QUANTILES, dtype=torch.float64)).float()
    return torch.bucketize(absval, cuts, right=True)


def _segments(x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor) -> tuple[Any, Any]:
    """Line segments as one x and one y array with a gap (NaN, drawn as a break) after each.

    NumPy arrays, not lists: plotly validates a list element by element, an array at once (10x faster).
    """
    nan = torch.full_like(x0, math.nan)
    return torch.stack([x0, x1, nan], 1).flatten().numpy(), torch.stack([y0, y1, nan], 1).flatten().numpy()


def graph_figure(circuit: Any, max_edges: int | None = None, pinned: str | None = None,
                 height: int = 650) -> Any:
    """The circuit as an explorable layered graph (see the module docstring).

    ``max_edges``: draw only the strongest ones (``None``: all); the title says how many of how many
    are drawn. ``pinned``: a node name whose edges are highlighted and whose marker is ringed.
    The node markers carry their names as ``customdata`` (a click selects one).
    """
    import plotly.graph_objects as go

    g: Graph = circuit.graph
    nxy, sxy = node_xy(g), slot_xy(g)
    us, vs, sc = edge_list(circuit, max_edges)
    total = circuit.n_edges
    x0, y0, x1, y1 = nxy[us, 0], nxy[us, 1], sxy[vs, 0], sxy[vs, 1]
    bins = weight_bins(sc.abs())
    fig = go.Figure()
    for sign, sel_sign in (("positive", sc >= 0), ("negative", sc < 0)):
        r, gr, b = SIGN_COLOURS[sign]
        for k in range(len(BIN_WIDTHS)):
            sel = sel_sign & (bins == k)
            if not bool(sel.any()):
                continue
            xs, ys = _segments(x0[sel], y0[sel], x1[sel], y1[sel])
            lo = float(sc[sel].abs().min())
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                                     line={"width": BIN_WIDTHS[k], "color": f"rgba({r},{gr},{b},{BIN_OPACITY[k]})"},
                                     name=f"{sign}, |score| ≥ {lo:.2g} ({int(sel.sum())})", legendgroup=sign))
    if len(sc):  # one hover point per edge, at its middle: the edge's card (WebGL: see the module docstring)
        names, snames = g.node_names, g.slot_names
        text = [f"{names[u]} → {snames[v]}: {s:+.4g}" for u, v, s in zip(us.tolist(), vs.tolist(), sc.tolist(),
                                                                         strict=True)]
        fig.add_trace(go.Scattergl(x=((x0 + x1) / 2).numpy(), y=((y0 + y1) / 2).numpy(), mode="markers",
                                 marker={"size": 5, "color": "rgba(0,0,0,0.01)"},
                                 hovertext=np.array(text, dtype=object),
                                 hoverinfo="text", name="edge cards", showlegend=False))
    summary = node_summary(circuit)
    if pinned and pinned in summary:
        pu = g.node_names.index(pinned) if pinned != "logits" else None
        mine = (us == pu) if pu is not None else torch.zeros_like(us, dtype=torch.bool)
        own = g.slot_owner[:, pu] if pu is not None else torch.zeros(g.n_slots, dtype=torch.bool)
        if pinned == "logits":
            own[g.logits_slot] = True
        mine |= own[vs]
        if bool(mine.any()):
            xs, ys = _segments(x0[mine], y0[mine], x1[mine], y1[mine])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name=f"edges of {pinned}",
                                     line={"width": 3, "color": "rgba(255,127,14,0.9)"}))
    order = list(summary)
    idx = [g.n_forward if n == "logits" else g.node_names.index(n) for n in order]
    pos = nxy[idx] if idx else torch.zeros(0, 2)
    top = max((s["score"] for s in summary.values()), default=1.0) or 1.0
    colours = {"input": "#7f7f7f", "head": "#17becf", "mlp": "#9467bd", "logits": "#444444"}
    named = set(sorted(order, key=lambda n: -summary[n]["score"])[:LABELLED_NODES]) | {pinned}
    fig.add_trace(go.Scatter(
        x=pos[:, 0].tolist(), y=pos[:, 1].tolist(), mode="markers+text", name="nodes", customdata=order,
        text=[n if n in named else "" for n in order], textposition="top center", textfont={"size": 10},
        hovertext=[_card(n, summary[n]) for n in order], hoverinfo="text",
        marker={"size": [8 + 10 * math.sqrt(summary[n]["score"] / top) for n in order],
                "color": [colours[summary[n]["kind"]] for n in order],
                "line": {"width": [4 if n == pinned else 1 for n in order],
                         "color": ["#ff7f0e" if n == pinned else "#ffffff" for n in order]}},
    ))
    drawn = len(sc)
    title = f"{drawn} of {total} circuit edges drawn ({g.n_edges} edges in the model)"
    if circuit.faithfulness == circuit.faithfulness:
        title += f"; faithfulness {circuit.faithfulness:.2f}"
    fig.update_layout(title=title, height=height, template="plotly_white", hovermode="closest",
                      xaxis={"title": "layer", "range": [-1.5, g.n_layers + 0.5], "zeroline": False},
                      yaxis={"visible": False}, legend={"orientation": "h", "y": -0.12}, clickmode="event+select",
                      dragmode="pan")
    return fig


def graph_json(circuit: Any) -> dict[str, Any]:
    """The circuit as plain data (schema ``knowscope.circuit_graph`` version 1): see docs/architecture.md."""
    g: Graph = circuit.graph
    us, vs, sc = edge_list(circuit)
    targets = slot_targets(g)
    summary = node_summary(circuit)
    dla = circuit.node_dla
    nodes = []
    for name, s in summary.items():
        u = g.node_names.index(name) if name != "logits" else None
        nodes.append({"id": name, "kind": s["kind"], "layer": s["layer"], "head": s["head"],
                      "score": s["score"], "n_in": s["n_in"], "n_out": s["n_out"],
                      "dla_answer": float(dla[0, u]) if dla is not None and u is not None else None})
    edges = [{"source": g.node_names[u], "slot": g.slot_names[v], "input": g.slot_kind[v], "targets": targets[v],
              "score": s} for u, v, s in zip(us.tolist(), vs.tolist(), sc.tolist(), strict=True)]
    meta = dict(circuit.meta)
    batch = meta.pop("batch", {}) or {}

    def num(x: float) -> float | None:
        return None if x != x else float(x)

    return {
        "schema": SCHEMA, "version": SCHEMA_VERSION,
        "metadata": {"model": meta.get("model"), "fingerprint": meta.get("fingerprint"),
                     "method": meta.get("method"), "metric": meta.get("metric"), "graph": g.to_dict(),
                     "n_edges_model": g.n_edges, "n_edges": circuit.n_edges,
                     "faithfulness": num(circuit.faithfulness), "metric_clean": num(circuit.metric_clean),
                     "metric_corrupted": num(circuit.metric_corrupted), "metric_circuit": num(circuit.metric_circuit),
                     "prompts": batch.get("prompts", []), "answers": batch.get("answers", []),
                     "corruption": batch.get("corruption")},
        "nodes": nodes, "edges": edges,
    }
