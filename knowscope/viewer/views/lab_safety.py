"""The Edit lab's safety side: one DINM edit of a safety item, judged before and after, with over-refusal.

What ``knowscope detox`` reports for an item, on the page: the layer (``auto``: the held-out probe over
the bundled safety items, with the settings tuned at that layer; ``located``: the item's own l2 layer,
DINM's reference locator; ``choose``), the item's five responses before above after with the judge's
verdicts, and over-refusal: the share of the bundled harmless prompts (XSTest-style, eight categories)
the model refuses before and after, per category, and which prompts it newly refuses. The probe's
location and the unedited model's refusals are computed once and kept in the tab's session.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from knowscope.safety.refusal import newly_refused
from knowscope.viewer.common import EDITS, Progress, ViewerConfig, lab, state_label

TOXIC_LOCATIONS = "lab_toxic_locations"  # per model state of this tab: the held-out probe's location (DINM auto)
REFUSALS_BEFORE = "lab_refusals_before"  # per (fingerprint, tokens): the unedited model's over-refusal


def probe_location(model: Any, edits: list[Any]) -> Any:
    """The held-out probe's toxic location over the bundled safety items on the model as this tab has it
    (``knowscope detox``'s default locator), computed once per model state of the tab."""
    from knowscope.circuits import locate_toxic_layers
    from knowscope.safeedit import load_bundled_safety

    found = st.session_state.setdefault(TOXIC_LOCATIONS, {})
    key = state_label(edits)
    if key not in found:
        found[key] = locate_toxic_layers(model, load_bundled_safety())
    return found[key]


def _refusals_before(model: Any, session: Any, tokens: int) -> dict[str, Any]:
    """Over-refusal of the unedited model (the "before" of every edit, as the item's responses), kept."""
    from knowscope.safety.refusal import load_bundled_benign, over_refusal

    found = st.session_state.setdefault(REFUSALS_BEFORE, {})
    key = (model.fingerprint, int(tokens))
    if key not in found:
        with session.unedited():
            found[key] = over_refusal(model, load_bundled_benign(), tokens)
    return found[key]


def apply_safety(cfg: ViewerConfig, item: Any, layer_mode: str, chosen: int,
                 settings: dict[str, Any], work: Any = None) -> dict[str, Any]:
    """DINM on ``item`` on top of this tab's edits: the edit and everything the page shows of it."""
    from knowscope.circuits import locate_toxic
    from knowscope.editing import dinm
    from knowscope.editing.dinm import DINMHyperParams
    from knowscope.editing.evaluation import PredictionTable
    from knowscope.probes import activation_shift
    from knowscope.safety.judge import get_judge
    from knowscope.safety.metrics import INPUT_KINDS, item_responses, judge_items
    from knowscope.safety.refusal import load_bundled_benign, over_refusal

    tokens = settings["max_new_tokens"]
    steps = ["locate the toxic layer", "DINM edit", "responses before vs after", "activation shift"]
    if settings.get("over_refusal"):
        steps.append("over-refusal: the harmless prompts before vs after")
    prog = Progress(steps)
    judge = get_judge(None)
    edits = list(st.session_state.get(EDITS, []))
    refusals = None
    with prog, lab(cfg).use(edits) as (model, session):
        location = probe_location(model, edits) if layer_mode == "auto" else None
        region = locate_toxic(model, item) if layer_mode == "located" else None
        layer = location.layer if location is not None else region.layer if region is not None else int(chosen)
        prog.next(f"layer {layer}")
        # at the probe's layer, the lr tuned there (as `knowscope detox`); elsewhere the editor's defaults
        hp = (DINMHyperParams.for_probe_layer if location is not None else DINMHyperParams.for_model)(model)
        result = dinm.edit(model, item, layer=layer, hparams=hp, on_unit=work)
        with session.unedited():
            before = item_responses(model, [item], tokens)[0]
        session.apply(result)
        prog.next()
        after = item_responses(model, [item], tokens)[0]
        safe_b = judge_items([item], [before], judge)[0]
        safe_a = judge_items([item], [after], judge)[0]
        prog.next()
        shift = activation_shift(session, [item.adversarial_prompt])
        if settings.get("over_refusal"):
            prog.next()
            refusals = {"before": _refusals_before(model, session, tokens),
                        "after": over_refusal(model, load_bundled_benign(), tokens), "max_new_tokens": tokens}
    rows = [{"kind": k, "prompt": item.inputs()[k], "before": before[k], "after": after[k],
             "safe_before": safe_b[k], "safe_after": safe_a[k]} for k in INPUT_KINDS]
    preds = PredictionTable(fact={"subject": f"safety item {item.id} ({item.category})", "prompt": item.question,
                                  "target_true": "unsafe response", "target_new": "safe response"}, rows=rows)
    prog.done(f"DINM edit at layer {layer} applied to this tab")
    return {"kind": "safety", "edit": result, "predictions": preds, "edit_metrics": None,
            "activation_shift": shift, "circuit_diff": None, "toxic_region": region, "toxic_location": location,
            "over_refusal": refusals, "judge": judge.name, "layer_note": None if location is None else (
                f"Layer {layer}: the held-out probe over {location.n_items} safety items (held-out accuracy "
                f"{float(location.accuracy[layer]):.2f}; its controls peak at layers "
                f"{', '.join(map(str, location.control_layers.values()))}); lr {hp.lr:g}, {hp.num_steps} steps.")}


def _plain(text: str) -> str:
    """``text`` on one line with Markdown's special characters escaped (a model's words, shown as written)."""
    return "".join("\\" + c if c in "\\`*_{}[]<>()#+-.!|~" else c for c in " ".join(str(text).split()))


def show_safety(rep: dict[str, Any]) -> None:
    """The item's verdicts and responses (before above after, never a table wider than the page), then
    over-refusal when it was measured."""
    rows = rep["predictions"].rows
    cols = st.columns(3)
    cols[0].metric("judged safe before", f"{round(sum(r['safe_before'] for r in rows))} of {len(rows)}")
    cols[1].metric("judged safe after", f"{round(sum(r['safe_after'] for r in rows))} of {len(rows)}",
                   help=f"judge: {rep.get('judge')}")
    refusals = rep.get("over_refusal")
    if refusals is not None:
        b, a = refusals["before"], refusals["after"]
        cols[2].metric("over-refusal", f"{a['rate']:.1%}", delta=f"{100 * (a['rate'] - b['rate']):+.1f} points",
                       delta_color="inverse", help=f"share of {a['n']} harmless prompts the model refuses "
                       f"(before: {b['rate']:.1%}); XSTest-style categories, {refusals['max_new_tokens']} tokens")
    st.markdown(f"**Before vs after** — {rep['predictions'].fact.get('subject')}")
    for r in rows:
        st.markdown(f"**{r['kind']}** — {r['prompt']}")
        for when in ("before", "after"):
            safe = "safe" if r[f"safe_{when}"] >= 0.5 else "unsafe"
            st.caption(f"{when} (judged {safe})")
            st.code(str(r[when]), language=None, wrap_lines=True)
    if refusals is None:
        return
    st.markdown("**Over-refusal** — harmless prompts refused, by category")
    st.dataframe([{"category": c, "before": f"{b['by_category'].get(c, 0.0):.0%}", "after": f"{v:.0%}"}
                  for c, v in a["by_category"].items()], hide_index=True)
    new = newly_refused(b["refused"], a["refused"])
    if not new:
        st.caption("No harmless prompt is refused after the edit that was answered before.")
        return
    st.markdown(f"Newly refused after the edit ({len(new)}):")
    st.markdown("\n".join(f"- *{_plain(r['category'])}*: {_plain(r['prompt'])} → “{_plain(r['response'])}”"
                           for r in new))
