"""The circuit graph on a page: size control with faithfulness, edges drawn, click to pin, JSON export.

Used by the Runs page (a saved circuit, no model: faithfulness only where it was measured) and by
the Circuit explorer (with the model: any size's faithfulness is measured on demand and remembered,
see :class:`knowscope.circuits.resize.Resizer`). Sizes are offered on a 1-2-5 ladder plus the saved
size and the faithfulness curve's sizes, so every position of the slider is a size that can be cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st

from knowscope.circuits.graphview import node_summary

DRAW_DEFAULT = 10_000  # edges drawn unless the reader asks for fewer or more


def size_options(c: Any) -> list[int]:
    """Circuit sizes the slider offers: 1, 2, 5, 10, ... up to every edge, the saved size and the curve's."""
    total = c.n_edges_total
    ladder = {m * 10**e for e in range(8) for m in (1, 2, 5)}
    sizes = {n for n in ladder if n <= total} | {total, max(1, c.n_edges)}
    sizes |= {int(n) for n in (c.curve or {}).get("n_edges_requested", []) if 0 < int(n) <= total}
    return sorted(sizes)


def curve_value(c: Any, n: int) -> float | None:
    """The faithfulness the saved curve measured at requested size ``n``, if it did."""
    curve = c.curve or {}
    for req, f in zip(curve.get("n_edges_requested", []), curve.get("faithfulness", []), strict=False):
        if int(req) == n:
            return float(f)
    return None


def _pick_size(c: Any, key: str) -> tuple[Any, str]:
    """The size control; returns the circuit as resized and a label of the rule."""
    from knowscope.circuits import prune

    mode = st.radio("Circuit size by", ["top-n edges", "score threshold"], horizontal=True, key=f"{key}-mode")
    if mode == "top-n edges":
        options = size_options(c)
        n = st.select_slider("edges in the circuit (top-n by |score|, then edges on no input-to-logits path "
                             "dropped)", options, value=max(1, c.n_edges) if c.n_edges in options else options[0],
                             key=f"{key}-n")
        if n == c.n_edges:
            return c, f"top {n}"
        return c.with_mask(prune(c.graph, c.scores, top_n=int(n))), f"top {n}"
    kept = c.scores.abs()[c.mask]
    top = float(c.scores.abs().max()) or 1.0
    start = float(kept.min()) if kept.numel() else top / 10  # the saved circuit's weakest edge
    thr = st.slider("keep edges with |score| at least", 0.0, top, min(start, top), step=top / 1000, format="%.5f",
                    key=f"{key}-thr")
    return c.with_mask(prune(c.graph, c.scores, threshold=thr)), f"|score| ≥ {thr:.4g}"


def _faithfulness(c: Any, shown: Any, rule: str, measure: Callable[[Any], float] | None) -> tuple[float | None, str]:
    """The shown circuit's faithfulness (``None``: not measured), and where it comes from."""
    if shown is c and c.faithfulness == c.faithfulness:
        return c.faithfulness, "measured when the circuit was saved"
    if rule.startswith("top "):
        at = curve_value(c, int(rule.split()[1]))
        if at is not None:
            return at, "from the saved faithfulness curve"
    if measure is None:
        return None, "open this circuit in the Circuit explorer to measure this size on the model"
    return measure(shown.mask), "measured now by exact edge patching on the circuit's prompts (cached)"


def _pin_from_click(key: str, names: list[str]) -> None:
    """Turn a click on a node marker (the chart's selection) into the pinned node, once per click."""
    event = st.session_state.get(f"{key}-chart")
    points = ((event or {}).get("selection") or {}).get("points") or []
    picked = [p.get("customdata") for p in points if p.get("customdata") in names]
    marker = json.dumps(picked)
    if picked and st.session_state.get(f"{key}-last-click") != marker:
        st.session_state[f"{key}-pin"] = picked[0]
    st.session_state[f"{key}-last-click"] = marker


def circuit_graph(c: Any, key: str = "circuit",
                  measure: Callable[[Any], float] | None = None) -> tuple[Any, str | None]:
    """Draw ``c`` with its controls; returns the circuit as shown and the pinned node (or ``None``).

    ``measure(mask) -> faithfulness``: how to measure a size the circuit did not save (``None``: no
    model on this page, say so).
    """
    shown, rule = _pick_size(c, key)
    summary = node_summary(shown)
    names = list(summary)
    cols = st.columns([3, 1, 2, 3])
    cols[0].metric("edges in the circuit", f"{shown.n_edges:,} of {shown.n_edges_total:,}")
    cols[1].metric("nodes", str(len(names)))
    with st.spinner("Measuring the faithfulness of this size ..."):
        faith, source = _faithfulness(c, shown, rule, measure)
    if faith is not None and shown is not c:
        shown.faithfulness = faith
    value = "not measured" if faith is None else f"{faith:.2f}"
    cols[2].metric("faithfulness", value, help=f"normalised faithfulness of this circuit: {source}")
    cols[3].caption(f"faithfulness at {shown.n_edges:,} edges: {value} ({source})")
    cols = st.columns([2, 2, 1])
    limit = cols[0].number_input("edges drawn (strongest first)", 1, max(1, shown.n_edges),
                                 min(max(1, shown.n_edges), DRAW_DEFAULT), key=f"{key}-draw")
    _pin_from_click(key, names)
    if st.session_state.get(f"{key}-pin") not in ["(none)", *names]:
        st.session_state[f"{key}-pin"] = "(none)"
    pin = cols[1].selectbox("pinned node (or click a node in the graph)", ["(none)", *names], key=f"{key}-pin")
    pinned = None if pin == "(none)" else pin
    cols[2].download_button("Export graph JSON", json.dumps(shown.to_graph_json()), file_name="circuit_graph.json",
                            mime="application/json", key=f"{key}-export",
                            help="nodes, edges, scores and metadata (schema knowscope.circuit_graph v1, "
                                 "docs/architecture.md)")
    drawn = min(int(limit), shown.n_edges)
    st.caption(f"{drawn:,} of {shown.n_edges:,} circuit edges drawn, strongest first ({rule}); blue: positive "
               "score, red: negative, thicker: stronger. Hover a node for its card; click it to pin it.")
    fig = shown.figure(max_edges=drawn, pinned=pinned)
    st.plotly_chart(fig, key=f"{key}-chart", on_select="rerun", selection_mode="points")
    if pinned:
        _pinned_panel(shown, pinned, summary[pinned])
    return shown, pinned


def _pinned_panel(shown: Any, node: str, s: dict[str, Any]) -> None:
    """The pinned node's card as text and its circuit edges in and out (no model needed)."""
    st.markdown(f"**Pinned: {node}** ({s['kind']}, layer {s['layer']}) — score Σ|edge| {s['score']:.4g}, "
                f"{s['n_in']} edges in, {s['n_out']} out")
    g = shown.graph
    own = set()
    if node == "logits":
        own.add("logits")
    else:
        u = g.node_index(node)
        own = {g.slot_names[v] for v in g.slot_owner[:, u].nonzero().flatten().tolist()}
    edges = shown.edges()
    left, right = st.columns(2)
    left.markdown("edges in")
    left.dataframe([e for e in edges if e["target"] in own][:200], hide_index=True)
    right.markdown("edges out")
    right.dataframe([e for e in edges if e["source"] == node][:200], hide_index=True)
