"""Runs page: every result saved under the runs folder, and any one of them drawn from disk."""

from __future__ import annotations

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import ViewerConfig, guard, run_label, slug
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
    with guard(f"Opening {info.path}"):
        render.show_run(info, found, key=f"runs-{slug(info.group)}-{slug(info.name)}")
