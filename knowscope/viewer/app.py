"""The viewer's Streamlit script (``knowscope view`` runs ``streamlit run`` on this file).

Settings come from the environment (see :mod:`knowscope.viewer.common`); the sidebar picks a page.
Each page only calls knowscope's APIs and draws their result objects.
"""

from __future__ import annotations

import streamlit as st

from knowscope.viewer.common import ViewerConfig, guard, model_state_switch
from knowscope.viewer.views import circuit, edit, probes, runs, sweeps, trace

PAGES = {
    "Runs": runs.render_page,
    "Causal trace": trace.render_page,
    "Circuit explorer": circuit.render_page,
    "Edit lab": edit.render_page,
    "Probes": probes.render_page,
    "Sweeps": sweeps.render_page,
}

st.set_page_config(page_title="knowscope", layout="wide")
cfg = ViewerConfig.from_env()
st.sidebar.title("knowscope")
page = st.sidebar.radio("Page", list(PAGES), key="page")
st.sidebar.caption(f"runs folder: `{cfg.runs_dir}`  \nmodel: `{cfg.model_label}`")
with guard(f"The {page} page"):
    PAGES[page](cfg)
model_state_switch()  # after the page: an edit the page just applied is already on the switch
