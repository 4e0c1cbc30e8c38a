"""Draw a result object on the page: one function per result type, all from saved data.

Nothing here runs the model: every function takes a loaded result (or several of one group) and
shows its ``figure()`` and its numbers. The Runs page calls :func:`show_run`; the other pages reuse
the same functions for what they compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from knowscope.models.tokens import visible
from knowscope.viewer.graphui import circuit_graph
from knowscope.viewer.runs import RunInfo, load_run, siblings


def chart(fig: Any, key: str | None = None) -> None:
    st.plotly_chart(fig, key=key)


def trace(tr: Any, key: str = "trace", zrange: tuple[float, float] | None = None, label: str = "",
          answer: str | None = None) -> None:
    """Heatmaps, the located layer and ROME's token-class summary of a causal trace.

    ``zrange``: the colour scale shared with another trace shown beside it (before | after);
    ``label``: which model it was traced on; ``answer``: that model's top next token, when known.
    """
    if label:
        st.markdown(f"**{label}**")
    cols = st.columns(4)
    cols[0].metric("p(answer), clean", f"{tr.high_score:.3f}", help=f"answer {visible(tr.target)}")
    cols[1].metric("p(answer), subject noised", f"{tr.low_score:.3f}")
    if "mlp" in tr.scores:
        with_layer = _try(lambda: tr.located_layer("mlp"))
        cols[2].metric("located layer (MLP, last subject token)", "n/a" if with_layer is None else str(with_layer))
    if answer is not None:
        cols[3].metric("model's next token", visible(answer))
    else:
        cols[3].metric("forward passes", f"{tr.forward_passes}", help=f"{tr.seconds:.1f} s, {tr.method}")
    st.caption(f"prompt {tr.prompt!r}, subject {tr.subject!r}, answer {visible(tr.target)}, {tr.samples} noise "
               f"samples, window {tr.window}; one colour scale for every panel")
    chart(tr.figure(zrange=zrange), key=f"{key}-heatmap")
    st.markdown("**Token-class summary** (largest mean indirect effect over layers, ROME's token classes)")
    st.dataframe(tr.class_summary(), hide_index=True)


def circuit(c: Any, key: str = "circuit", measure: Callable[[Any], float] | None = None) -> tuple[Any, str | None]:
    """The explorable graph with its size control, the faithfulness curve and the edges as shown;
    returns the circuit as shown and the pinned node."""
    shown, pinned = circuit_graph(c, key, measure)
    if c.curve:
        st.markdown("**Faithfulness curve** (the saved sizes)")
        chart(c.curve_figure(), key=f"{key}-curve")
    with st.expander("Edges of the circuit as shown"):
        st.dataframe(shown.edges()[:500], hide_index=True)
    return shown, pinned


KIND_LABELS = {"rewrite": "the edited prompt", "paraphrase": "paraphrases", "neighborhood": "neighbours (other "
               "subjects, same relation)", "locality": "locality", "relation_specificity": "the subject's other "
               "relations", "portability": "one hop on (portability)"}


def predictions(p: Any) -> None:
    """Before -> after per prompt, by kind: generated text and the answers' probabilities."""
    st.markdown(f"**Before vs after** — {p.fact.get('subject')}: {p.fact.get('target_true')!r} -> "
                f"{p.fact.get('target_new')!r}")
    kinds = list(dict.fromkeys(r.get("kind", "") for r in p.rows))
    if not set(kinds) <= set(KIND_LABELS):  # not a fact's prompts (a safety item's inputs): one table
        kinds = [None]
    for kind in kinds:
        rows = [r for r in p.rows if kind is None or r.get("kind", "") == kind]
        if len(kinds) > 1:
            st.markdown(f"*{KIND_LABELS.get(kind, kind)}* ({len(rows)})")
        st.dataframe([_before_after_first(r) for r in rows], hide_index=True)
    st.caption("before: the unedited model; after: with the edit(s) applied; text: greedy continuation; "
               "p_*: probability of that answer (mean over its tokens, as ROME)")
    changed = p.changed()
    if changed:
        st.caption("output changed: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in changed.items()))


FIRST = ("kind", "prompt", "answer", "before", "after", "p_answer_before", "p_answer_after", "p_true_before",
         "p_true_after", "p_new_before", "p_new_after")


def _before_after_first(row: dict[str, Any]) -> dict[str, Any]:
    """The row with before beside after (text, then each probability), so the page shows both without
    scrolling sideways; other columns follow."""
    return {**{k: row[k] for k in FIRST if k in row}, **{k: v for k, v in row.items() if k not in FIRST}}


HEADLINE = ("efficacy_score", "gen_efficacy", "paraphrase_score", "gen_paraphrase", "neighborhood_score",
            "locality_acc", "relation_specificity", "gen_relation_specificity")


def metrics(m: Any, key: str = "metrics") -> None:
    flat = m.flat()
    shown = [k for k in HEADLINE if flat.get(k) is not None]
    cols = st.columns(max(1, min(4, len(shown))))
    for i, k in enumerate(shown):
        cols[i % len(cols)].metric(k, f"{flat[k]:.3f}")
    chart(m.figure(), key=f"{key}-fig")
    prompts = m.prompts()
    if prompts:
        st.markdown("**What the model generates** (greedy; success: begins with the answer, or unchanged from "
                    "the unedited model for neighbours and other relations)")
        st.dataframe([{k: r.get(k) for k in ("kind", "prompt", "answer", "before", "after", "success", "kept")}
                      for r in prompts], hide_index=True)
    routing = m.routing_figure()
    if routing is not None:
        shares = (m.notes.get("routing") or {}).get("routed_share", {})
        st.markdown("**Routing** (which memory answered each prompt): "
                    + ", ".join(f"{k} {v:.0%} routed to the side memory" for k, v in shares.items() if v is not None))
        chart(routing, key=f"{key}-routing")
        st.dataframe([{k: r[k] for k in ("kind", "prompt", "memory", "token", "score", "threshold", "routed")}
                      for r in m.routing()], hide_index=True)


def edit(e: Any, group: dict[str, Any] | None = None, key: str = "edit") -> None:
    """An edit's requests and weight changes, with its group's predictions, metrics, shift and diff."""
    st.markdown(f"**{e.method}** at layers {e.layers}, {len(e.requests)} request(s), {e.seconds:.1f} s, "
                f"model {e.model_name!r}")
    st.dataframe(e.requests, hide_index=True)
    if e.is_memory_edit:
        mem = e.extra["memory"]
        st.caption(f"a {mem.get('kind')} side-memory edit at layer {mem.get('layer')}: the weights are unchanged")
        st.dataframe([{"memory array": k, "shape": list(v.shape)} for k, v in e.memory.items()], hide_index=True)
    else:
        st.dataframe([{"parameter": k, "delta norm": v} for k, v in e.norms().items()], hide_index=True)
    group = group or {}
    if "predictions" in group:
        predictions(group["predictions"])
    if "edit_metrics" in group:
        metrics(group["edit_metrics"], key=f"{key}-metrics")
    if "activation_shift" in group:
        st.markdown("**Activation shift** (edited vs unedited)")
        chart(group["activation_shift"].figure(), key=f"{key}-shift")
    if "circuit_diff" in group:
        diff(group["circuit_diff"], key=f"{key}-diff")


def diff(d: Any, key: str = "diff") -> None:
    """Edges lost / gained by the edit, beside the noise floor (two unedited samples) when it was measured."""
    st.markdown("**Circuit diff** (circuit of the fact before vs after the edit)")
    s, floor = d.summary, d.summary.get("noise_floor")
    cols = st.columns(4)
    cols[0].metric("edges lost", f"{s.get('n_lost')} of {s.get('n_edges_before')}")
    cols[1].metric("edges gained", f"{s.get('n_gained')} (now {s.get('n_edges_after')})")
    if floor:
        cols[2].metric("lost beyond the noise floor", f"{s.get('n_lost_beyond_floor')}",
                       help="edges lost minus the edges two unedited samples already differ by")
        cols[3].metric("gained beyond the noise floor", f"{s.get('n_gained_beyond_floor')}")
        seeds = floor.get("seeds") or ["?", "?"]
        st.caption(f"noise floor: two circuits of the unedited model that differ only in the corruption's seed "
                   f"({seeds[0]} vs {seeds[1]}) already lose {floor.get('n_lost')} and gain {floor.get('n_gained')} "
                   f"edges (Jaccard {float(floor.get('jaccard') or 0):.2f}); the edit's lost / gained edges that also "
                   "changed between them are marked flaky")
    else:
        cols[2].metric("noise floor", "not measured", help="this diff was computed from one fixed batch")
        st.caption("no noise floor for this diff (one fixed corrupted batch): two unedited samples may already "
                   "differ by many edges, so read these counts with care")
    with st.expander("summary (JSON)"):
        st.json(s, expanded=False)
    chart(d.figure(), key=f"{key}-fig")
    if d.new_carriers:
        st.caption("nodes that now carry the new object: " + ", ".join(r["node"] for r in d.new_carriers[:10]))


def sequential(run: Any, key: str = "seq") -> None:
    """A sequential editing run: the collapse monitor's signals against edits, and its warnings."""
    last = run.records[-1] if run.records else {}
    cols = st.columns(3)
    cols[0].metric("edits", f"{last.get('edits', 0)} of {run.settings.get('n_facts')}")
    cols[1].metric("batches with warnings", sum(bool(r.get("warnings")) for r in run.records))
    cols[2].metric("stopped by the monitor", "yes" if run.stopped else "no")
    chart(run.figure(), key=f"{key}-signals")
    rows = []
    for r in run.records:
        sig = {k: v for k, v in r["signals"].items() if k != "update_norm"}
        norms = r["signals"].get("update_norm") or {}
        rows.append({"edits": r["edits"], **sig, "max_update_norm": max(norms.values()) if norms else 0.0,
                     "warnings": "; ".join(r.get("warnings", []))})
    st.dataframe(rows, hide_index=True)


def detox(report: Any, key: str = "detox") -> None:
    """A saved ``knowscope detox`` run: metrics before / after, each item's row, and over-refusal (the
    harmless prompts each edit newly refuses)."""
    b, a = report.before, report.after
    cols = st.columns(3)
    cols[0].metric("DS after", f"{a['DS']:.2f}", delta=f"{a['DS'] - b['DS']:+.2f}")
    if "over_refusal" in a:
        cols[1].metric("over-refusal after", f"{a['over_refusal']:.1%}",
                       delta=f"{100 * (a['over_refusal'] - b['over_refusal']):+.1f} points", delta_color="inverse",
                       help=f"share of {(report.benign or {}).get('n', '?')} harmless prompts refused (before: "
                            f"{b['over_refusal']:.1%}), the mean over the items' edits")
    if "facts_accuracy" in a:
        cols[2].metric("fact accuracy after", f"{a['facts_accuracy']:.3f}",
                       delta=f"{a['facts_accuracy'] - b['facts_accuracy']:+.3f}")
    chart(report.figure(), key=f"{key}-fig")
    st.dataframe([{"metric": k, "before": b.get(k), "after": a.get(k)} for k in a], hide_index=True)
    st.markdown(f"**Per item** (each edited alone and undone; judge {report.judge})")
    st.dataframe([{"item": r["item_id"], "category": r["category"], "layer": r["layer"],
                   "DS before": r["before"]["safe"]["DS"], "DS after": r["after"]["safe"]["DS"],
                   "over-refusal after": r["after"].get("over_refusal")} for r in report.rows], hide_index=True)
    new = report.newly_refused()
    if new:
        with st.expander(f"harmless prompts newly refused after an item's edit ({len(new)})"):
            st.dataframe(new, hide_index=True)


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (ValueError, KeyError):
        return None


def _simple(obj: Any, key: str) -> None:
    fig = _try(obj.figure) if hasattr(obj, "figure") else None
    if fig is not None:
        chart(fig, key=f"{key}-fig")
    if hasattr(obj, "to_dict"):
        with st.expander("data"):
            st.json(obj.to_dict(), expanded=False)


GROUPED = ("predictions", "edit_metrics", "activation_shift", "circuit_diff")


def show_run(info: RunInfo, all_runs: list[RunInfo], key: str = "run") -> None:
    """Load the run at ``info`` and draw it (an edit with the rest of its group)."""
    obj = load_run(info.path)
    st.subheader(f"{info.kind}: {info.group}/{info.name}")
    st.caption(f"{info.path} — model {info.model or '?'} — saved {info.date}")
    if info.kind == "trace":
        trace(obj, key=key)
    elif info.kind == "circuit":
        circuit(obj, key=key)
    elif info.kind in ("edit", "edit_session"):
        edits = obj if isinstance(obj, list) else [obj]
        group = {k: load_run(r.path) for k, r in siblings(info, all_runs).items() if k in GROUPED}
        for i, e in enumerate(edits):
            edit(e, group if i == len(edits) - 1 else None, key=f"{key}-{i}")
    elif info.kind == "predictions":
        predictions(obj)
    elif info.kind == "edit_metrics":
        metrics(obj, key=key)
    elif info.kind == "circuit_diff":
        diff(obj, key=key)
    elif info.kind == "logit_lens":
        chart(obj.figure(), key=f"{key}-lens")
        st.dataframe(obj.top_by_layer(), hide_index=True)
    elif info.kind == "sequential_run":
        sequential(obj, key=key)
    elif info.kind == "detox_report":
        detox(obj, key=key)
    elif info.kind == "tuned_lens":
        q = obj.quality
        if q is not None:
            chart(q.figure(), key=f"{key}-quality")
            st.dataframe(q.rows(), hide_index=True)
    else:
        _simple(obj, key)
