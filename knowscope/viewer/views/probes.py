"""Probes page: the logit and tuned lens of a prompt (side by side), and a saved probe's accuracy by layer."""

from __future__ import annotations

import streamlit as st

from knowscope.models.tokens import visible
from knowscope.viewer import render
from knowscope.viewer.common import (
    LongWork,
    ViewerConfig,
    active_edits,
    guard,
    lab,
    pick_run,
    save_target,
    state_label,
)

LENSES = ["logit lens", "tuned lens", "both"]


def _lens(cfg: ViewerConfig) -> None:
    st.subheader("Logit and tuned lens")
    st.caption("Every layer's residual stream read through the final norm (its own scale) and the unembedding; "
               "the tuned lens first maps each layer through a learned affine translator (trained on the model's "
               "own text, cached per model).")
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
    which = st.radio("read with", LENSES, horizontal=True, key="lens_kind")
    tuned = _tuned(cfg) if which != "logit lens" else None
    if which != "logit lens" and tuned is None:
        return
    edits = active_edits()
    compare = bool(edits) and st.checkbox("before | after: read the unedited model too", True, key="lens_compare")
    if st.button("Run the lens", type="primary", key="lens_run"):
        st.session_state["lens_results"] = None
        with guard("The lens"):
            if not prompt.strip():
                raise ValueError("enter a prompt")
            from knowscope.probes import lens

            targets = [" " + target.strip()] if target.strip() else []
            readers = {"logit lens": [None], "tuned lens": [tuned], "both": [None, tuned]}[which]
            states = [("before", []), ("after", edits)] if compare else [("", edits)]
            results = []
            with st.spinner("Reading every layer ..."):
                for name, applied in states:
                    with lab(cfg).use(applied) as (model, _):
                        for t in readers:
                            res = lens(model, prompt, targets=targets, k=int(k), tuned=t)
                            res.meta["model_state"] = state_label(applied)
                            res.meta["side"] = name
                            results.append(res)
            st.session_state["lens_results"] = results
    results = st.session_state.get("lens_results")
    if results:
        sides = list(dict.fromkeys(r.meta.get("side", "") for r in results))
        for kind in dict.fromkeys(r.meta.get("lens", "logit") for r in results):
            row = [r for r in results if r.meta.get("lens", "logit") == kind]
            for col, res in zip(st.columns(len(row)), row, strict=True):
                with col:
                    side = res.meta.get("side", "")
                    st.markdown(f"**{side + ': ' if side else ''}{res.meta.get('model_state', '')} model**")
                    _show_lens(res, f"lens-live-{kind}-{side or 'only'}")
        if len(sides) > 1:
            st.caption("before: the unedited model; after: with this tab's edits applied (sidebar switch)")
        if st.button("Save to the runs folder", key="lens_save"):
            with guard("Saving the lens"):
                for res in results:
                    name = res.meta.get("lens", "logit") + "-lens" + (f"-{res.meta['side']}" if res.meta.get("side")
                                                                      else "")
                    st.success(f"saved to {res.save(save_target(cfg, name))}")


def _tuned(cfg: ViewerConfig) -> object | None:
    """The cached tuned lens of the lab's model, or a button to train one (None until there is one)."""
    tuned = _find_or_train(cfg)
    if st.session_state.pop("lens_trained", False):
        st.rerun()  # outside the guard: the page shows the new lens
    return tuned


def _find_or_train(cfg: ViewerConfig) -> object | None:
    from knowscope.probes.tuned_lens import DEFAULT_STEPS, DEFAULT_TRAIN_TOKENS, cached_tuned_lens, tuned_lens

    with guard("Finding the tuned lens"), lab(cfg).use() as (model, _):
        tuned = cached_tuned_lens(model)
        if tuned is None:
            st.info(f"No tuned lens is cached for {model.name} yet. Training reads the model's own sampled "
                    "text (minutes on a laptop CPU for the default model) and is cached for later.")
            cols = st.columns(2)
            tokens = cols[0].number_input("training tokens", 64, 1_000_000, DEFAULT_TRAIN_TOKENS, key="lens_tokens")
            steps = cols[1].number_input("steps", 1, 100_000, DEFAULT_STEPS, key="lens_steps")
            job = LongWork("lens_train", "tuned_lens", "Tuned-lens training", unit="steps")
            job.estimate(int(steps), " for the steps; reading the training text comes first (about 2 min for "
                         "16k tokens on the default model)")
            if st.button("Train the tuned lens", key="lens_train"):
                with job.run() as work:
                    tuned_lens(model, n_tokens=int(tokens), steps=int(steps), on_unit=work)
                    st.session_state["lens_trained"] = True
            job.cancelled_notice()
            return None
        if tuned is not None:
            with st.expander("tuned lens quality (held-out KL and top-1 agreement by layer)"):
                q = tuned.quality
                if q is not None:
                    render.chart(q.figure(), key="lens-quality")
                    st.dataframe(q.rows(), hide_index=True)
        return tuned
    return None


def _show_lens(res: object, key: str) -> None:
    name = "tuned lens" if res.meta.get("lens") == "tuned" else "logit lens"
    cols = st.columns(2)
    cols[0].metric(f"{name}: the model's answer", visible(res.top_tokens[-1][-1][0]),
                   help="top-1 token at the last layer and position")
    if res.targets:
        first = res.first_top1_layer(0)
        cols[1].metric(f"first layer where {visible(res.targets[0])} is top-1",
                       "never" if first is None else f"{first} of {res.n_layers - 1}")
    render.chart(res.figure(), key=key)
    with st.expander(f"{name}: top tokens by layer (last position)"):
        rows = res.top_by_layer()
        st.dataframe([{**r, "tokens": [visible(t) for t in r["tokens"]]} for r in rows], hide_index=True)


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
