"""Circuit explorer: a knowledge circuit as a layered graph, its faithfulness, and one node up close."""

from __future__ import annotations

import time

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import (
    LongWork,
    ViewerConfig,
    active_edits,
    bundled_facts,
    guard,
    lab,
    pick_run,
    save_target,
    slug,
    state_label,
)

RESIZERS = "circuit_resizers"  # per circuit id: the Resizer that measures other sizes' faithfulness


def _compute(cfg: ViewerConfig) -> None:
    facts = bundled_facts()
    relations = sorted({f.relation_id for f in facts})
    cols = st.columns(4)
    rel = cols[0].selectbox("relation", relations, key="circuit_relation")
    of_rel = [f for f in facts if f.relation_id == rel]
    n = cols[1].number_input("facts", 1, max(1, min(8, len(of_rel))), min(3, len(of_rel)), key="circuit_n")
    method = cols[2].selectbox("method", ["eap-ig", "eap"], key="circuit_method")
    corruption = cols[3].selectbox("corruption", ["swap", "noise"], key="circuit_corruption",
                                   help="swap: another subject of the same token length; noise: ROME's noise")
    st.caption("facts: " + "; ".join(f.text + " " + f.target_true for f in of_rel[: int(n)]))
    job = LongWork("circuit_run", "circuit", "Circuit search", unit="passes", scale=float(n))
    job.estimate(_units(cfg, method), " (one gradient pass per integrated-gradient step, one patched run per "
                 "size of the faithfulness curve, one for the circuit)")
    if st.button("Find the circuit", type="primary", key="circuit_run"):
        st.session_state["circuit_result"] = None
        st.session_state["circuit_node_detail"] = None
        st.session_state["circuit_id"] = f"live-{st.session_state.get('circuit_runs', 0) + 1}"
        st.session_state["circuit_runs"] = st.session_state.get("circuit_runs", 0) + 1
        edits = active_edits()
        st.session_state["circuit_edits"] = edits
        with guard("The circuit search"), job.run() as work:
            from knowscope.circuits import knowledge_circuit

            t0 = time.perf_counter()
            with lab(cfg).use(edits) as (model, _):
                c = knowledge_circuit(model, of_rel[: int(n)], method=method, corruption=corruption,
                                      pool=facts, on_unit=work)
            c.meta["model_state"] = state_label(edits)
            st.session_state["circuit_result"] = c
            st.success(f"Circuit found in {time.perf_counter() - t0:.1f} s on the {state_label(edits)} model")
    job.cancelled_notice()


def _units(cfg: ViewerConfig, method: str) -> int:
    """How many units a circuit search on the lab's model takes (its graph's edge count sets the curve's sizes)."""
    from knowscope.circuits.circuit import circuit_units
    from knowscope.circuits.graph import Graph

    return circuit_units(Graph.from_model(lab(cfg).model).n_edges, method)


def _measure(cfg: ViewerConfig, c: object, cid: str) -> object:
    """``mask -> faithfulness`` on the model the circuit was computed on (with the edits it was computed
    with), through one cached :class:`~knowscope.circuits.resize.Resizer` per circuit."""
    def measure(mask: object) -> float:
        from knowscope.circuits.resize import Resizer

        edits = st.session_state.get("circuit_edits", []) if cid.startswith("live") else []
        resizers = st.session_state.setdefault(RESIZERS, {})
        with lab(cfg).use(edits) as (model, _):
            if cid not in resizers:
                resizers[cid] = Resizer(model, c)
            r = resizers[cid]
            if r.mismatch is not None and r.mismatch > 1e-3:
                st.warning(f"Measured on this circuit's prompts rebuilt, the saved circuit's faithfulness comes out "
                           f"{r.mismatch:.3f} away from the saved value (a circuit saved before its noise seed and "
                           "scale were recorded): compare sizes with each other, not with the saved value.")
            return r.faithfulness(mask)

    return measure


def _node_panel(cfg: ViewerConfig, shown: object, cid: str, node: str | None) -> None:
    """The pinned node on the model: its role, attention pattern (heads) and what its output promotes."""
    if node is None or node in ("input", "logits"):
        st.caption("Pin a head or an MLP (click it in the graph, or pick it above) to read its attention pattern "
                   "and what its output promotes through the unembedding.")
        return
    prompts = (shown.meta.get("batch") or {}).get("prompts") or [""]
    cols = st.columns([2, 1])
    example = cols[0].selectbox("prompt", range(len(prompts)), format_func=lambda i: f"{i}: {prompts[i][:60]}",
                                key="circuit_example")
    wanted = (cid, node, int(example), shown.n_edges)
    if cols[1].button(f"Attention and unembedding of {node}", key="circuit_inspect"):
        st.session_state["circuit_node_detail"] = None
        with guard(f"Inspecting {node}"):
            from knowscope.circuits.nodes import node_detail

            edits = st.session_state.get("circuit_edits", []) if cid.startswith("live") else []
            with st.spinner(f"Reading {node} on the model ..."), lab(cfg).use(edits) as (model, _):
                st.session_state["circuit_node_detail"] = (wanted, node_detail(model, shown, node,
                                                                                example=int(example)))
    found = st.session_state.get("circuit_node_detail")
    if found is None or found[0] != wanted:
        return
    d = found[1]
    role = d.role.to_dict() if d.role else {"role": "n/a"}
    st.metric(f"role of {d.node}", role.get("role", "n/a"))
    st.dataframe([role], hide_index=True)
    left, right = st.columns(2)
    with left:
        if d.pattern is not None:
            render.chart(d.pattern_figure(), key="node-pattern")
        else:
            st.caption("MLPs have no attention pattern.")
    with right:
        render.chart(d.promotes_figure(), key="node-promotes")


def render_page(cfg: ViewerConfig) -> None:
    st.header("Circuit explorer")
    st.caption("Knowledge circuits by edge attribution patching (EAP / EAP-IG) over heads and MLPs, pruned "
               "to a faithful size.")
    source = st.radio("Circuit", ["saved circuit", "compute one"], horizontal=True, key="circuit_source")
    if source == "saved circuit":
        info = pick_run(cfg, ("circuit",), key="circuit_saved", label="saved circuit")
        if info is None:
            return
        if st.session_state.get("circuit_loaded_path") != str(info.path):
            st.session_state["circuit_result"] = None
            st.session_state["circuit_loaded_path"] = str(info.path)
            st.session_state["circuit_node_detail"] = None
            st.session_state["circuit_id"] = f"saved-{slug(str(info.path))}"
            with guard("Opening the circuit"):
                from knowscope.circuits import Circuit

                st.session_state["circuit_result"] = Circuit.load(info.path)
    else:
        _compute(cfg)
        if st.session_state.get("circuit_loaded_path"):
            st.session_state["circuit_result"] = None
            st.session_state["circuit_loaded_path"] = None
    c = st.session_state.get("circuit_result")
    if c is None:
        return
    with guard("Drawing the circuit"):
        cid = st.session_state.get("circuit_id", "circuit")
        if c.meta.get("model_state"):
            st.caption(f"computed on the {c.meta['model_state']} model")
        shown, pinned = render.circuit(c, key=f"explorer-{cid}", measure=_measure(cfg, c, cid))
        _node_panel(cfg, shown, cid, pinned)
    if source == "compute one" and st.button("Save this circuit to the runs folder", key="circuit_save"):
        with guard("Saving the circuit"):
            st.success(f"saved to {c.save(save_target(cfg, 'circuit'))}")
