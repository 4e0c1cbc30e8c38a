"""Edit lab: locate, edit one fact (ROME / MEMIT / FT / FactKey / GRACE / WISE) or one safety item (DINM), compare,
undo, save. For the memory editors (FactKey, GRACE, WISE) the metrics show how each prompt was routed.

A tab's edits are a list in its own session state; the shared model only carries them inside
:meth:`~knowscope.viewer.lab.ModelLab.use` (see :mod:`knowscope.viewer.lab`). Applying an edit
computes it on top of this tab's earlier edits and records everything the page shows (predictions
before / after, metrics, activation shift, circuit diff) while the edit is applied; undo drops the
tab's last edit. Nothing here leaves the shared model edited. The safety side (DINM on a safety item,
its responses and over-refusal) is :mod:`knowscope.viewer.views.lab_safety`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import streamlit as st

from knowscope.viewer import render
from knowscope.viewer.common import (
    EDITS,
    LongWork,
    Progress,
    ViewerConfig,
    bundled_facts,
    edit_summary,
    fact_label,
    guard,
    lab,
    save_target,
)
from knowscope.viewer.lab import friendly
from knowscope.viewer.views.lab_safety import apply_safety, show_safety

FACT_METHODS = ("ROME", "MEMIT", "FT", "FactKey", "GRACE", "WISE")
MEMORY_METHODS = ("FactKey", "GRACE", "WISE")
REPORT = "edit_lab_report"  # what the last apply measured


def _hparams(model: Any, method: str, layers: list[int] | None, settings: dict[str, Any]) -> Any:
    from knowscope.editing.editors import get_editor
    from knowscope.editing.ft import FTHyperParams
    from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams

    if method in MEMORY_METHODS:
        return get_editor(method).hparams.for_model(model, **({"layer": layers[0]} if layers else {}))
    if method == "ROME":
        hp = ROMEHyperParams.for_model(model).with_(v_steps=settings["v_steps"], stats_tokens=settings["stats_tokens"])
        return hp.with_(layer=layers[0]) if layers else hp
    if method == "MEMIT":
        hp = MEMITHyperParams.for_model(model).with_(v_steps=settings["v_steps"], stats_tokens=settings["stats_tokens"])
        return hp.with_(layers=tuple(layers), layers_window=len(layers)) if layers else hp
    return FTHyperParams.for_model(model, **({"layer": layers[0]} if layers else {}))


def _default_layers(model: Any, method: str) -> list[int]:
    from knowscope.editing.editors import get_editor

    return get_editor(method).default_layers(model)


def refusal(method: str, edits: list[Any]) -> str | None:
    """Why ``method`` cannot be applied on top of ``edits`` (checked before any computation), or ``None``.

    A weight edit over memory edits is refused by :class:`~knowscope.editing.EditSession` (a memory's
    keys were read on the weights as they were); saying so first spares the computation.
    """
    memory = [e for e in edits if e.is_memory_edit]
    if method in MEMORY_METHODS or method not in FACT_METHODS + ("DINM",) or not memory:
        return None
    return (f"{method} changes the weights, and this tab carries {len(memory)} memory edit(s) "
            f"({', '.join(edit_summary(e) for e in memory)}); weight edits go below memory edits. Undo the memory "
            f"edit(s) with 'Undo the last edit', apply {method}, then apply the memory edit(s) again")


LAYER_MODES = ("auto", "located", "choose")


def layer_note(model: Any, method: str) -> str:
    """What each layer mode means for ``method`` on ``model`` (shown before the user applies)."""
    from knowscope.editing.layers import measured_layer

    if method == "DINM":
        return ("auto: the layer where a held-out safe-vs-unsafe probe over the bundled safety items separates the "
                "responses best (`knowscope detox`'s default; computed at the first apply, about 20 s, then kept), "
                "edited with the settings tuned at that layer; located: the item's own toxic layer (the largest "
                "hidden-state distance between its safe and unsafe responses, DINM's reference locator; the last "
                "layer for nearly every item on the default model); choose: the layer below")
    if method in MEMORY_METHODS:
        default = _default_layers(model, method)[0]
        return (f"auto: the {method} memory at its editor's layer {default}, where its router settings were chosen; "
                f"located: the memory at the causal-tracing peak of this fact instead (honoured; the router's "
                f"settings were not tuned there: read the routing warnings below); choose: the layer below")
    m = measured_layer(model, method)
    auto = (f"auto: layer {m.layer}{' (window centre)' if m.window > 1 else ''}, the best of a {m.n_facts}-fact "
            f"layer sweep of {method} on this model ({m.metric} {m.value:.3f}; the tracing peak, layer "
            f"{m.located_layer}, scored {m.located_value:.3f})" if m is not None else
            f"auto: no layer sweep is recorded for {method} on this model, so auto uses the tracing peak (= located)")
    return f"{auto}; located: the causal-tracing peak of this fact (MLP, last subject token); choose: the layer below"


def _layers(model: Any, fact: Any, method: str, mode: str, chosen: int, samples: int) -> tuple[list[int], Any]:
    """The layers ``method`` edits in layer ``mode`` and, when tracing chose them, the layer choice to draw."""
    from knowscope.circuits import locate
    from knowscope.editing.layers import resolve_layers

    default = _default_layers(model, method)
    if mode == "choose":
        if method == "MEMIT":  # a window of the default size ending at the chosen layer
            return list(range(max(0, int(chosen) - len(default) + 1), int(chosen) + 1)), None
        return [int(chosen)], None
    if mode == "auto":
        if method in MEMORY_METHODS:
            return default, None
        window = len(default) if method == "MEMIT" else None
        return resolve_layers(model, [fact], "auto", default, method=method.lower(), window=window), None
    window = len(default) if method == "MEMIT" else None
    choice = locate(model, [fact], kind="mlp", window=window, samples=samples)
    return list(choice.layers), choice


def _apply_fact(cfg: ViewerConfig, fact: Any, method: str, layer_mode: str, chosen: int,
                settings: dict[str, Any], work: Any = None) -> dict[str, Any]:
    from knowscope.editing.editors import get_editor
    from knowscope.probes.report import edit_report

    steps = ["choose the layer", f"{method} edit", "before vs after", "metrics", "activation shift"]
    if settings["diff"]:
        steps.append("circuit diff (before, a second unedited sample for the noise floor, after)")
    prog = Progress(steps)
    edits = list(st.session_state.get(EDITS, []))
    with prog, lab(cfg).use(edits) as (model, session):
        layers, choice = _layers(model, fact, method, layer_mode, chosen, settings["samples"])
        prog.next(f"layers {layers}")
        hp = _hparams(model, method, layers, settings)
        # one signature for every editor; key statistics and templates are computed on the base
        # weights by the editor itself, whatever edits this tab has applied
        editor = get_editor(method)
        result = editor(model, [fact], layers=layers if editor.layer_window else layers[0], hparams=hp)
        session.apply(result)
        # the same report as `knowscope demo`: predictions, metrics, activation shift, circuit diff
        rep = edit_report(session, fact, diff=bool(settings["diff"]), step=lambda name: prog.next(), on_unit=work)
    prog.done(f"{method} edit at layers {layers} applied to this tab")
    diff_error = friendly(ValueError(rep.circuit_diff_error)) if rep.circuit_diff_error else None
    note = None
    if method in MEMORY_METHODS and layer_mode != "auto":
        note = (f"The {method} memory sits at layer {layers[0]} ({layer_mode}); its editor's own layer is "
                f"{_default_layers(model, method)[0]}, where its router settings were chosen.")
    return {"kind": "fact", "edit": result, "predictions": rep.predictions, "edit_metrics": rep.metrics,
            "activation_shift": rep.shift, "circuit_diff": rep.circuit_diff, "circuit_diff_error": diff_error,
            "layer_choice": choice, "layer_mode": layer_mode, "layer_note": note}


ROUTED_KINDS = {"neighborhood": ("neighbourhood prompts", "other subjects, same relation"),
                "relation_specificity": ("relation-specificity prompts", "the subject's other relations")}


def router_warnings(metrics: Any, threshold: float) -> list[str]:
    """One line per kind of prompt the edit must leave alone (neighbours, the subject's other relations) of which
    more than ``threshold`` is routed to the side memory after a memory edit: those prompts are answered from
    the memory, not the weights."""
    if metrics is None:
        return []
    routing = metrics.notes.get("routing") or {}
    rows = metrics.routing()
    out = []
    for kind, (label, what) in ROUTED_KINDS.items():
        got = [r for r in rows if r.get("kind") == kind]
        routed = [r for r in got if r.get("routed")]
        if got and len(routed) / len(got) > threshold:
            memory = str(routing.get("memory", "side")).upper()
            out.append(f"{len(routed)} of {len(got)} {label} ({len(routed) / len(got):.0%}; {what}) route to the "
                       f"{memory} memory after this edit, so the memory answers them "
                       f"too (e.g. {routed[0]['prompt']!r}). Check their answers below before trusting this edit.")
    return out


def _show_report(rep: dict[str, Any]) -> None:
    e = rep["edit"]
    st.subheader(f"{e.method} at layers {e.layers}")
    for line in router_warnings(rep.get("edit_metrics"), float(rep.get("route_threshold", 0.0))):
        st.warning(f"Router warning: {line}")
    if rep.get("layer_note"):
        st.info(rep["layer_note"])
    if rep.get("layer_choice") is not None:
        render.chart(rep["layer_choice"].figure(), key="lab-locate")
    for key in ("toxic_region", "toxic_location"):
        if rep.get(key) is not None:
            render.chart(rep[key].figure(), key=f"lab-{key}")
    if rep["kind"] == "safety":
        show_safety(rep)
    else:
        render.predictions(rep["predictions"])
    if rep.get("edit_metrics") is not None:
        render.metrics(rep["edit_metrics"], key="lab-metrics")
    st.markdown("**Activation shift** (this tab's edits vs the unedited model)")
    render.chart(rep["activation_shift"].figure(), key="lab-shift")
    if rep.get("circuit_diff") is not None:
        render.diff(rep["circuit_diff"], key="lab-diff")
    elif rep.get("circuit_diff_error"):
        st.warning(f"No circuit diff: {rep['circuit_diff_error']}")


def _job(cfg: ViewerConfig, method: str, settings: dict[str, Any]) -> LongWork | None:
    """The long part of an apply, estimated before and cancellable while it runs: DINM's optimiser steps, or
    the circuit diff's three circuits (before, a second unedited sample for the noise floor, after)."""
    if method == "DINM":
        from knowscope.editing.dinm import DINMHyperParams

        steps = DINMHyperParams.for_model(lab(cfg).model).num_steps
        job = LongWork("lab_apply", "dinm", "DINM edit", unit="steps")
        job.estimate(steps, " for the edit; locating the toxic layer (auto: about 20 s the first time), the "
                     "responses before / after and over-refusal (80 harmless prompts) come on top")
        return job
    if not settings["diff"]:
        return None
    from knowscope.circuits.circuit import circuit_units
    from knowscope.circuits.graph import Graph

    job = LongWork("lab_apply", "circuit", "Circuit diff", unit="passes")
    job.estimate(3 * circuit_units(Graph.from_model(lab(cfg).model).n_edges), " for the three circuits of the diff; "
                 "the edit and its metrics come first")
    return job


def _save(cfg: ViewerConfig, rep: dict[str, Any], name: str, edits: list[Any]) -> str:
    """Save this tab's edits (an edit session: the measurements were made with all of them applied)
    and what was measured, as one group under the runs folder."""
    from knowscope.facts import write_json_atomic

    folder = save_target(cfg, name)
    with lab(cfg).use(edits) as (_, session):
        session.save(folder / "edit")
    rep["predictions"].save(folder / "predictions")
    rep["activation_shift"].save(folder / "shift")
    for key, sub in (("edit_metrics", "metrics"), ("circuit_diff", "circuit_diff"), ("toxic_region", "toxic"),
                     ("toxic_location", "toxic_location")):
        if rep.get(key) is not None:
            rep[key].save(folder / sub)
    if rep.get("over_refusal") is not None:
        write_json_atomic(folder / "over_refusal.json", rep["over_refusal"])
    return str(folder)


def render_page(cfg: ViewerConfig) -> None:
    st.header("Edit lab")
    st.caption("Pick a fact and a method, take the layer `auto` (measured by a layer sweep), the located one or "
               "choose one, apply, compare; undo or save. "
               "Edits live in this browser tab only.")
    target = st.radio("Edit", ["a fact (ROME / MEMIT / FT / FactKey / GRACE / WISE)", "a safety item (DINM)"],
                      horizontal=True, key="lab_target")
    safety = target.startswith("a safety")
    if safety:
        from knowscope.safeedit import load_bundled_safety

        items = load_bundled_safety()
        item = st.selectbox("safety item", items, key="lab_item",
                            format_func=lambda it: f"{it.id} [{it.category}] {it.question[:80]}")
        method = "DINM"
    else:
        facts = bundled_facts()
        fact = st.selectbox("fact", facts, format_func=fact_label, key="lab_fact")
        new = st.text_input("new object", fact.target_new, key=f"lab_new-{facts.index(fact)}")
        method = st.radio("method", FACT_METHODS, horizontal=True, key="lab_method")
    cols = st.columns(2)
    layer_mode = cols[0].radio("layer", LAYER_MODES, horizontal=True, key="lab_layer_mode",
                               help="auto: the layer a measured layer sweep found best (what the docs recommend); "
                                    "located: causal tracing (facts) or the toxic-region distance (DINM); "
                                    "choose: the layer on the right")
    chosen = cols[1].number_input("layer (when choosing; MEMIT: last layer of its window)", 0, 200, 5,
                                  key="lab_layer")
    with guard("Reading the layer modes"):
        st.caption(layer_note(lab(cfg).model, method))
    with st.expander("settings"):
        c = st.columns(6)
        settings = {
            "v_steps": int(c[0].number_input("v* steps", 1, 100, 20, key="lab_v_steps")),
            "stats_tokens": int(c[1].number_input("key-statistics tokens", 100, 100_000, 8000, key="lab_stats")),
            "samples": int(c[2].number_input("tracing samples (locate)", 1, 20, 3, key="lab_samples")),
            "max_new_tokens": int(c[3].number_input("response tokens (DINM)", 4, 128, 32, key="lab_tokens")),
            "over_refusal": bool(c[3].checkbox("over-refusal", True, key="lab_over_refusal",
                                               help="DINM: responses to 80 harmless prompts before and after the edit: "
                                                    "the share refused, per category, and which are newly refused")),
            "diff": bool(c[4].checkbox("circuit diff", False, help="EAP-IG circuits before / after the edit, "
                                       "and a second unedited one (another seed) for the noise floor",
                                       key="lab_diff")),
            "route_threshold": float(c[5].number_input(
                "router warning above (share)", 0.0, 1.0, 0.0, 0.05, key="lab_route_threshold",
                help="memory edits: warn when more than this share of the neighbourhood prompts (or of the "
                     "subject's other relations) routes to the memory; 0: any")),
        }
    job = _job(cfg, method, settings)
    if st.button(f"Apply {method}", type="primary", key="lab_apply"):
        with guard(f"The {method} edit"):
            refused = refusal(method, list(st.session_state.get(EDITS, [])))
            if refused:
                raise ValueError(refused)
            t0 = time.perf_counter()
            if not safety and not new.strip():
                raise ValueError("enter the new object")
            with job.run() if job is not None else contextlib.nullcontext() as work:
                if safety:
                    rep = apply_safety(cfg, item, layer_mode, chosen, settings, work=work)
                else:
                    from dataclasses import replace

                    rep = _apply_fact(cfg, replace(fact, target_new=new.strip()), method, layer_mode, chosen,
                                      settings, work=work)
                rep["seconds"] = time.perf_counter() - t0
                rep["route_threshold"] = settings["route_threshold"]
                st.session_state.setdefault(EDITS, []).append(rep["edit"])
                st.session_state[REPORT] = rep
    if job is not None:
        job.cancelled_notice()
    edits = st.session_state.setdefault(EDITS, [])
    cols = st.columns([1, 2, 1])
    if cols[0].button("Undo the last edit", key="lab_undo", disabled=not edits):
        undone = edits.pop()
        st.session_state[REPORT] = None
        st.success(f"undone: {edit_summary(undone)}")
    st.markdown(f"**This tab's edits: {len(edits)}** " + "; ".join(f"({i + 1}) {edit_summary(e)}"
                                                                  for i, e in enumerate(edits)))
    if edits:
        st.caption("The trace, circuit and lens pages read the model with these edits applied while the sidebar's "
                   "switch says 'edited'.")
    rep = st.session_state.get(REPORT)
    if rep is not None:
        name = cols[1].text_input("save as", f"{rep['edit'].method}-{rep['predictions'].fact.get('subject', '')}",
                                  key=f"lab_save_name-{len(edits)}", label_visibility="collapsed")
        if cols[2].button("Save this edit", key="lab_save"):
            with guard("Saving the edit"):
                st.success(f"saved to {_save(cfg, rep, name, edits)}")
        _show_report(rep)
