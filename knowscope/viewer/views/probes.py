"""Probes page: the logit lens of a prompt, and a saved probe's accuracy by layer."""

from __future__ import annotations

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import ViewerConfig, guard, lab, pick_run, save_target


def _lens(cfg: ViewerConfig) -> None:
    st.subheader("Logit lens")
    st.caption("Every layer's residual stream read through the final norm (its own scale) and the unembedding.")
    source = st.radio("lens", ["a prompt", "saved lens"], horizontal=True, key="lens_source",
                      label_visibility="collapsed")
    if source == "saved lens":
        info = pick_run(cfg, ("logit_lens",), key="lens_saved", label="saved logit lens")
        if info is not None:
            with guard("Opening the logit lens"):
                from knowscope.probes import LogitLensResult

                _show_lens(LogitLensResult.load(info.path), "lens-saved")
        return
    cols = st.columns([3, 1, 1])
    prompt = cols[0].text_input("prompt", "The Eiffel Tower is located in the city of", key="lens_prompt")
    target = cols[1].text_input("target token (optional)", "Paris", key="lens_target")
    k = cols[2].number_input("top-k", 1, 20, 5, key="lens_k")
    if st.button("Run logit lens", type="primary", key="lens_run"):
        st.session_state["lens_result"] = None
        with guard("The logit lens"):
            if not prompt.strip():
                raise ValueError("enter a prompt")
            from knowscope.probes import logit_lens

            with st.spinner("Reading every layer ..."), lab(cfg).use() as (model, _):
                targets = [" " + target.strip()] if target.strip() else []
                st.session_state["lens_result"] = logit_lens(model, prompt, targets=targets, k=int(k))
    res = st.session_state.get("lens_result")
    if res is not None:
        _show_lens(res, "lens-live")
        if st.button("Save this lens to the runs folder", key="lens_save"):
            with guard("Saving the logit lens"):
                st.success(f"saved to {res.save(save_target(cfg, 'lens'))}")


def _show_lens(res: object, key: str) -> None:
    if res.targets:
        first = res.first_top1_layer(0)
        st.metric(f"first layer where {res.targets[0]!r} is top-1",
                  "never" if first is None else f"{first} of {res.n_layers - 1}")
    render.chart(res.figure(), key=key)
    with st.expander("top tokens by layer (last position)"):
        st.dataframe(res.top_by_layer(), hide_index=True)


def _probe(cfg: ViewerConfig) -> None:
    st.subheader("Linear probe accuracy by layer")
    info = pick_run(cfg, ("probe_report", "linear_probe"), key="probe_saved", label="saved probe")
    if info is None:
        st.caption("Save one with `probe_layers(...).save(dir)` (see notebooks/05_probes.ipynb).")
        return
    with guard("Opening the probe"):
        from knowscope.viewer.runs import load_run

        obj = load_run(info.path)
        if info.kind == "probe_report":
            cols = st.columns(len(obj.accuracy) or 1)
            for col, method in zip(cols, obj.accuracy, strict=False):
                i, acc = obj.best(method)
                col.metric(f"best {method}", f"{acc:.2f}", help=f"at {obj.hooks[i]}")
            render.chart(obj.figure(), key="probe-fig")
            st.dataframe([{"hook": h, **{m: obj.accuracy[m][i] for m in obj.accuracy}}
                          for i, h in enumerate(obj.hooks)], hide_index=True)
        else:
            st.metric(f"{obj.method} probe at {obj.hook}", f"{obj.accuracy:.2f}")


def render_page(cfg: ViewerConfig) -> None:
    st.header("Probes")
    _lens(cfg)
    st.divider()
    _probe(cfg)
