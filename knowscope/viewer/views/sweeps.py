"""Sweeps page: open a sweep store (``knowscope sweep --store``) and see whether locating predicted editing.

Shows the located vs the best layer, the rank correlations between tracing effect and edit success,
edit success by layer with both layers marked, effect against success for every (fact, layer), and
one fact's row. Reads the store only; nothing is recomputed and no model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from knowscope.sweep import SweepResult
from knowscope.sweep.analysis import HEADLINE_METRICS, SUCCESS_METRICS
from knowscope.sweep.grid import TRACE_KINDS
from knowscope.viewer.common import ViewerConfig, guard

STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def find_stores(root: Path) -> list[Path]:
    """Sweep stores under ``root`` (files with a store suffix that open as one)."""
    if not root.is_dir():
        return []
    out = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in STORE_SUFFIXES and p.is_file()):
        try:
            SweepResult.load(path)
        except (ValueError, OSError):
            continue
        out.append(path)
    return out


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def render_page(cfg: ViewerConfig) -> None:
    st.header("Sweeps")
    st.caption("Does locating inform editing? A sweep (`knowscope sweep --store FILE`) edits every fact at every "
               "layer and traces it; here: the layer `locate()` picks against the layer where edits worked best.")
    stores = find_stores(cfg.runs_dir)
    typed = st.text_input("store file", value="", key="sweep_path",
                          help="a sweep store anywhere on disk; or pick one found under the runs folder below")
    if typed.strip():
        path = Path(typed.strip()).expanduser()
    elif stores:
        path = st.selectbox("sweep store", stores, format_func=lambda p: str(p.relative_to(cfg.runs_dir)),
                            key="sweep_pick")
    else:
        st.info(f"No sweep store under `{cfg.runs_dir}`. Run one, e.g. `knowscope sweep --method rome --layers "
                f"all --limit 40 --store {cfg.runs_dir}/sweeps/rome.sqlite`, or type a store's path above.")
        return
    with guard(f"Opening {path}"):
        res = SweepResult.load(path)
        if not res.methods:
            st.info(f"{path} holds no finished cells yet ({len(res.traces)} facts traced).")
            return
        method = st.radio("method", res.methods, horizontal=True, key="sweep_method")
        s = res.summary(method)
        cols = st.columns(5)
        planned = len(res.facts) * len(res.layers) * len(res.settings["seeds"])
        cols[0].metric("cells", f"{s['n_cells_stored']} of {planned}")
        cols[1].metric("facts traced", f"{len(res.traces)} of {len(res.facts)}")
        cols[2].metric("located layer (locate)", str(s["located_layer"]))
        cols[3].metric("best layer (CounterFact score)", str(s["best_layer"]))
        cols[4].metric("score lost at the located layer", _fmt(s["quality_lost"]["score"]))
        st.caption(f"model {res.settings['model']} ({res.settings['fingerprint']}), layers "
                   f"{res.layers[0]}-{res.layers[-1]}, seeds {res.settings['seeds']}"
                   + (f", MEMIT window {res.settings['window']}" if method == "memit" else "")
                   + (f"; {len(res.errors)} cells failed" if res.errors else ""))
        st.plotly_chart(res.figure(method), use_container_width=True)
        st.subheader("Rank correlation: tracing effect at a layer vs edit success there")
        table = []
        for kind in TRACE_KINDS:
            for m in HEADLINE_METRICS:
                c = res.correlation(method, m, kind)
                table.append({"effect": kind, "success": m, "pooled ρ": c["pooled"],
                              "per-fact ρ (mean)": c["per_fact_mean"], "per-fact ρ (median)": c["per_fact_median"],
                              "over layer means": c["layer_means"], "points": c["n_points"]})
        st.dataframe(table, hide_index=True)
        metric = st.selectbox("success metric", list(SUCCESS_METRICS), index=1, key="sweep_metric")
        kind = st.radio("tracing effect", list(TRACE_KINDS), index=1, horizontal=True, key="sweep_kind")
        st.plotly_chart(res.correlation_figure(method, metric, kind), use_container_width=True)
        st.subheader("One fact")
        facts = {f["fact"]: f for f in res.facts}

        def label(i: int) -> str:
            f = facts[i]
            return f"{f['fact_id']}: {f['prompt'].format(f['subject'])} → {f['target_new']} (was {f['target_true']})"

        fact = st.selectbox("fact", sorted(facts), key="sweep_fact", format_func=label)
        st.dataframe(res.fact_rows(fact, method), hide_index=True)
