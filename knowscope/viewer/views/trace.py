"""Causal trace page: trace a bundled fact or your own prompt, or open a saved trace."""

from __future__ import annotations

import time

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import (
    ViewerConfig,
    active_edits,
    bundled_facts,
    fact_label,
    guard,
    lab,
    pick_run,
    save_target,
    state_label,
)

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

    edits = active_edits()
    compare = bool(edits) and st.checkbox("before / after: trace the unedited model too (one colour scale for both)",
                                          True, key="trace_compare")
    if st.button("Run trace", type="primary", key="trace_run"):
        st.session_state["trace_result"] = None
        with guard("The causal trace"):
            if not prompt.strip() or not subject.strip():
                raise ValueError("enter a prompt and the subject in it")
            if not kinds:
                raise ValueError("pick at least one kind to trace")
            from knowscope.circuits import trace

            target_text = (" " + target.strip()) if target.strip() else None
            states = [("after", edits), ("before", [])] if compare else [("", edits)]
            out = []
            with st.status(f"Tracing {prompt!r} ({', '.join(kinds)}, {samples} samples) ...", expanded=False) as status:
                t0 = time.perf_counter()
                for name, applied in states:
                    with lab(cfg).use(applied) as (model, _):
                        tr = trace(model, prompt, subject, target=target_text, samples=int(samples),
                                   window=int(window), kinds=kinds)
                        answer = next_token(model, prompt)
                    out.append((f"{name}: {state_label(applied)} model" if name else
                                f"on the {state_label(applied)} model", tr, answer))
                    target_text = tr.target  # the after's answer is scored before too
                status.update(label=f"Traced in {time.perf_counter() - t0:.1f} s", state="complete")
            st.session_state["trace_result"] = list(reversed(out)) if compare else out
    found = st.session_state.get("trace_result")
    if found:
        lo = min(tr.score_range()[0] for _, tr, _ in found)
        hi = max(tr.score_range()[1] for _, tr, _ in found)
        for label, tr, answer in found:  # before above after: three panels each need the page's width
            render.trace(tr, key=f"trace-live-{label.split(':')[0]}", zrange=(lo, hi), label=label, answer=answer)
        if st.button("Save this trace to the runs folder", key="trace_save"):
            with guard("Saving the trace"):
                for label, tr, _ in found:
                    name = f"trace-{tr.subject}" + ("-" + label.split(":")[0] if len(found) > 1 else "")
                    st.success(f"saved to {tr.save(save_target(cfg, name))}")


def next_token(model: object, prompt: str) -> str:
    """The model's most likely next token after ``prompt`` (BOS first), as text."""
    import torch

    with torch.no_grad():
        logits = model.bridge(model.to_tokens(prompt).to(model.device))
    return model.tokenizer.decode([int(logits[0, -1].argmax())])
