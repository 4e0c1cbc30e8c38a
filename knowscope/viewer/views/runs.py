"""Runs page: every result saved under the runs folder, and any one of them drawn from disk."""

from __future__ import annotations

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import ViewerConfig, edit_summary, guard, lab, run_label, slug, use_edits
from knowscope.viewer.runs import scan_runs


def render_page(cfg: ViewerConfig) -> None:
    st.header("Runs")
    st.caption(f"Results saved under `{cfg.runs_dir}` by the CLI (`--out` / `--save`), the notebooks or "
               "`save(dir)`. Opening one reads it from disk; nothing is recomputed.")
    if not cfg.runs_dir.is_dir():
        st.warning(f"The runs folder `{cfg.runs_dir}` does not exist. Run `knowscope demo` (it saves to runs/demo) "
                   "or start the viewer on another folder: `knowscope view FOLDER`.")
        return
    found = scan_runs(cfg.runs_dir)
    if not found:
        st.info(f"No saved results under `{cfg.runs_dir}` yet.")
        return
    kinds = sorted({r.kind for r in found})
    pick = st.multiselect("kinds", kinds, kinds, key="runs_kinds")
    shown = [r for r in found if r.kind in pick]
    st.dataframe([r.to_row() for r in shown], hide_index=True)
    if not shown:
        return
    info = st.selectbox("open a run", shown, format_func=run_label, key="runs_open")
    if info.kind in ("edit", "edit_session") and st.button(
            "Use this edit on every page", key="runs_use_edit",
            help="the trace, circuit and lens pages then read the model with this run's edits applied (replaces "
                 "this tab's edits; the sidebar switches between edited and unedited)"):
        with guard("Loading the edit"):
            from knowscope.editing import EditSession

            edits = EditSession.load_edits(info.path)
            with lab(cfg).use(edits):  # refuses another model's edits here, with a message, not on every page
                pass
            use_edits(edits)
            st.session_state["runs_loaded_edit"] = "; ".join(edit_summary(e) for e in edits)
            st.rerun()
    if st.session_state.get("runs_loaded_edit"):
        st.success(f"every page now reads the model edited by: {st.session_state.pop('runs_loaded_edit')}")
    with guard(f"Opening {info.path}"):
        render.show_run(info, found, key=f"runs-{slug(info.group)}-{slug(info.name)}")
