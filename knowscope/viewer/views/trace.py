"""Causal trace page: trace a bundled fact or your own prompt, or open a saved trace."""

from __future__ import annotations

import time

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import ViewerConfig, bundled_facts, fact_label, guard, lab, pick_run, save_target

SOURCES = ("bundled fact", "my prompt", "saved trace")


def render_page(cfg: ViewerConfig) -> None:
    st.header("Causal trace")
    st.caption("ROME's causal tracing: noise the subject's embeddings, restore one hidden / MLP / attention "
               "state at a time, and see how much of the answer's probability comes back.")
    source = st.radio("Trace", SOURCES, horizontal=True, key="trace_source")
    if source == "saved trace":
        info = pick_run(cfg, ("trace",), key="trace_saved", label="saved trace")
        if info is not None:
            with guard("Opening the trace"):
                from knowscope.circuits import TraceResult

                render.trace(TraceResult.load(info.path), key="trace-saved")
        return

    if source == "bundled fact":
        facts = bundled_facts()
        fact = st.selectbox("fact", facts, format_func=fact_label, key="trace_fact")
        prompt, subject, target = fact.text, fact.subject, fact.target_true
    else:
        prompt = st.text_input("prompt", "The Eiffel Tower is located in the city of", key="trace_prompt")
        subject = st.text_input("subject (as it appears in the prompt)", "The Eiffel Tower", key="trace_subject")
        target = st.text_input("answer to score (empty: the model's top prediction)", "", key="trace_target")
    cols = st.columns(3)
    samples = cols[0].number_input("noise samples", 1, 50, 3, key="trace_samples")
    window = cols[1].number_input("MLP/attention window", 1, 20, 10, key="trace_window")
    kinds = cols[2].multiselect("kinds", ["hidden", "mlp", "attn"], ["hidden", "mlp", "attn"], key="trace_kinds")

    if st.button("Run trace", type="primary", key="trace_run"):
        st.session_state["trace_result"] = None
        with guard("The causal trace"):
            if not prompt.strip() or not subject.strip():
                raise ValueError("enter a prompt and the subject in it")
            if not kinds:
                raise ValueError("pick at least one kind to trace")
            from knowscope.circuits import trace

            target_text = (" " + target.strip()) if target.strip() else None
            with st.status(f"Tracing {prompt!r} ({', '.join(kinds)}, {samples} samples) ...", expanded=False) as status:
                t0 = time.perf_counter()
                with lab(cfg).use() as (model, _):
                    st.session_state["trace_result"] = trace(model, prompt, subject, target=target_text,
                                                             samples=int(samples), window=int(window), kinds=kinds)
                status.update(label=f"Traced in {time.perf_counter() - t0:.1f} s", state="complete")
    tr = st.session_state.get("trace_result")
    if tr is not None:
        render.trace(tr, key="trace-live")
        if st.button("Save this trace to the runs folder", key="trace_save"):
            with guard("Saving the trace"):
                path = tr.save(save_target(cfg, f"trace-{tr.subject}"))
                st.success(f"saved to {path}")
