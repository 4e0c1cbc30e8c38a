"""The viewer's long work and the edit lab's guidance, on a tiny model: a time estimate before, a cancel that
keeps nothing, the layer modes (auto / located / choose, memory editors included), router warnings, the
circuit diff's noise floor, DINM's responses stacked before above after."""

from __future__ import annotations

import pytest
import torch
from viewer_app import APP, apply_dinm, ok, page, save_lab

from knowscope.editing.evaluation.metrics import EditMetrics


@pytest.fixture()
def app(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KNOWSCOPE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("KNOWSCOPE_MODEL", "tiny-llama")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return at


def weights():
    from knowscope.viewer.common import get_lab

    return {n: p.detach().clone() for n, p in get_lab("tiny-llama").model.named_parameters().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def cancelling(real, flag, at_unit=None):
    """``real`` with its ``on_unit`` progress callback wrapped: at unit ``at_unit`` (every unit if None) it sets
    the Cancel button's session flag ``flag``, as a click while the work runs does."""
    import streamlit as st

    def wrapped(*args, **kw):
        inner = kw["on_unit"]

        def unit(done, total):
            if at_unit is None or done == at_unit:
                st.session_state[flag] = True
            inner(done, total)

        return real(*args, **{**kw, "on_unit": unit})

    return wrapped


def test_a_circuit_search_is_estimated_and_a_cancel_keeps_nothing(app, monkeypatch):
    """The Cancel button's flag, set while the search runs (as its click does), stops it between two units:
    a warning, no circuit, the shared model as it was; the next search runs to the end."""

    import knowscope.circuits as circuits

    real = circuits.knowledge_circuit
    clicked_cancel_midway = cancelling(real, "circuit_run:cancel", at_unit=2)

    page(app, "Circuit explorer")
    app.radio(key="circuit_source").set_value("compute one").run()
    app.number_input(key="circuit_n").set_value(1).run()
    app.selectbox(key="circuit_method").set_value("eap").run()
    app.selectbox(key="circuit_corruption").set_value("noise").run()
    assert any(c.value.startswith("Estimated time: about") for c in app.caption)
    before = weights()
    monkeypatch.setattr(circuits, "knowledge_circuit", clicked_cancel_midway)
    app.button(key="circuit_run").click().run()
    ok(app)
    assert any("Circuit search cancelled" in w.value for w in app.warning)
    assert app.session_state["circuit_result"] is None and not app.get("plotly_chart")
    assert same(before, weights())
    monkeypatch.setattr(circuits, "knowledge_circuit", real)
    app.button(key="circuit_run").click().run()
    ok(app)
    assert app.session_state["circuit_result"] is not None and not app.warning
    app.run()  # the finished run's measured cost now makes the estimate
    assert any("measured on this viewer's last run" in c.value for c in app.caption)


def test_a_cancelled_dinm_edit_leaves_no_edit_in_the_tab(app, monkeypatch):

    import knowscope.editing.dinm as dinm

    real = dinm.edit
    clicked_cancel = cancelling(real, "lab_apply:cancel")

    page(app, "Edit lab")
    app.radio(key="lab_target").set_value("a safety item (DINM)").run()
    app.radio(key="lab_layer_mode").set_value("choose").run()
    app.number_input(key="lab_layer").set_value(2).run()
    assert any(c.value.startswith("Estimated time:") and "steps" in c.value for c in app.caption)
    before = weights()
    monkeypatch.setattr(dinm, "edit", clicked_cancel)
    app.button(key="lab_apply").click().run()
    ok(app)
    assert any("DINM edit cancelled" in w.value for w in app.warning)
    assert any("This tab's edits: 0" in m.value for m in app.markdown)
    assert same(before, weights())


def test_edit_lab_layer_modes_default_to_auto_and_say_what_they_do(app):
    page(app, "Edit lab")
    assert app.radio(key="lab_layer_mode").value == "auto"  # the docs' recommendation, for ROME too
    app.radio(key="lab_method").set_value("ROME").run()
    assert any("auto: no layer sweep is recorded for ROME on this model" in c.value for c in app.caption)
    app.number_input(key="lab_v_steps").set_value(4).run()
    app.number_input(key="lab_stats").set_value(400).run()
    app.number_input(key="lab_samples").set_value(1).run()
    app.button(key="lab_apply").click().run()  # auto without a sweep = the traced layer, drawn
    ok(app)
    rep = app.session_state["edit_lab_report"]
    assert rep["layer_mode"] == "auto" and rep["layer_choice"] is None
    app.button(key="lab_undo").click().run()
    # a memory editor at the located layer: honoured, and said so
    app.radio(key="lab_method").set_value("GRACE").run()
    assert any("located: the memory at the causal-tracing peak" in c.value for c in app.caption)
    app.radio(key="lab_layer_mode").set_value("located").run()
    app.button(key="lab_apply").click().run()
    ok(app)
    rep = app.session_state["edit_lab_report"]
    layer = rep["layer_choice"].layers[0]
    assert rep["edit"].layers == [layer]
    assert any(f"The GRACE memory sits at layer {layer} (located)" in i.value for i in app.info)


def test_router_warnings_count_routed_neighbours_and_other_relations():
    from knowscope.viewer.views.edit import router_warnings

    def route(prompt, routed):
        return {"prompt": prompt, "memory": "wise" if routed else "main", "score": 1.0, "threshold": 0.5,
                "routed": routed}

    m = EditMetrics(n_facts=1, per_fact=[{"case_id": 0, "subject": "X", "routing": {
        "rewrite": [route("X is in", True)],
        "neighborhood": [route(f"N{i} is in", i < 7) for i in range(10)],
        "relation_specificity": [route("X speaks", False), route("X was born in", False)]}}],
        notes={"routing": {"memory": "wise"}})
    lines = router_warnings(m, 0.0)
    assert len(lines) == 1 and lines[0].startswith("7 of 10 neighbourhood prompts (70%; other subjects, same relation) "
                                               "route to the WISE memory")
    assert "'N0 is in'" in lines[0]
    assert router_warnings(m, 0.7) == [] and len(router_warnings(m, 0.69)) == 1
    assert router_warnings(None, 0.0) == []


def test_edit_lab_shows_router_warnings_and_the_diff_noise_floor(app):
    """A GRACE edit: the lab warns exactly when its routing table shows routed neighbours; a
    ROME edit with the circuit diff shows the counts beyond the noise floor."""
    page(app, "Edit lab")
    app.radio(key="lab_method").set_value("GRACE").run()
    app.radio(key="lab_layer_mode").set_value("choose").run()
    app.number_input(key="lab_layer").set_value(2).run()
    app.button(key="lab_apply").click().run()
    ok(app)
    m = app.session_state["edit_lab_report"]["edit_metrics"]
    routed = [r for r in m.routing() if r["kind"] == "neighborhood" and r["routed"]]
    warned = [w.value for w in app.warning if w.value.startswith("Router warning")]
    assert bool(routed) == bool(warned)  # the warning follows the routing table, whatever it says
    app.button(key="lab_undo").click().run()
    app.radio(key="lab_method").set_value("ROME").run()
    app.number_input(key="lab_v_steps").set_value(4).run()
    app.number_input(key="lab_stats").set_value(400).run()
    app.checkbox(key="lab_diff").check().run()
    assert any("for the three circuits of the diff" in c.value for c in app.caption)
    app.button(key="lab_apply").click().run()
    ok(app)
    diff = app.session_state["edit_lab_report"]["circuit_diff"]
    s = diff.summary
    assert s["noise_floor"]["seeds"] == [0, 1]
    assert s["n_lost_beyond_floor"] == max(0, s["n_lost"] - s["noise_floor"]["n_lost"])
    labels = {m.label: m.value for m in app.metric}
    assert labels["lost beyond the noise floor"] == str(s["n_lost_beyond_floor"])
    assert labels["edges lost"] == f"{s['n_lost']} of {s['n_edges_before']}"


def test_dinm_responses_are_stacked_before_above_after(app):
    apply_dinm(app)
    ok(app)
    rows = app.session_state["edit_lab_report"]["predictions"].rows
    assert [r["kind"] for r in rows] == ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"]
    codes = [c.value for c in app.code]
    assert codes == [str(r[w]) for r in rows for w in ("before", "after")]  # every response, in order, wrapped
    assert not any("safe_after" in d.value.columns for d in app.dataframe)  # no wide table


def test_dinm_in_the_lab_measures_over_refusal_before_and_after(app, tmp_path):
    from knowscope.safety.refusal import load_bundled_benign, over_refusal
    from knowscope.viewer.common import get_lab

    model = get_lab("tiny-llama").model
    benign = load_bundled_benign()
    unedited = over_refusal(model, benign, 6)
    apply_dinm(app)
    ok(app)
    refusals = app.session_state["edit_lab_report"]["over_refusal"]
    assert refusals["before"] == unedited  # measured on the unedited model, as the item's responses
    assert refusals["after"]["n"] == len(benign) and refusals["max_new_tokens"] == 6
    metric = next(m for m in app.metric if m.label == "over-refusal")
    assert metric.value == f"{refusals['after']['rate']:.1%}"
    table = next(d.value for d in app.dataframe if "category" in d.value.columns)
    assert sorted(table["category"]) == sorted({p.category for p in benign})
    save_lab(app, "dinm")
    ok(app)
    import json

    (saved,) = (tmp_path / "runs").glob("**/over_refusal.json")
    assert json.loads(saved.read_text())["before"]["rate"] == unedited["rate"]


def test_runs_page_opens_a_saved_detox_report(app, tmp_path):
    from knowscope.safeedit import load_bundled_safety
    from knowscope.safety.metrics import DetoxReport, detox
    from knowscope.safety.refusal import first_per_category, load_bundled_benign
    from knowscope.viewer.common import get_lab

    model = get_lab("tiny-llama").model
    report = detox(model, load_bundled_safety()[:2], layer=1, max_new_tokens=3,
                   benign=first_per_category(load_bundled_benign(), 1), benign_tokens=2)
    report.meta = {"model": model.name}
    report.save(tmp_path / "runs" / "detox" / "report")  # the fixture's runs folder
    again = DetoxReport.load(tmp_path / "runs" / "detox" / "report")
    assert again.to_dict() == report.to_dict() and again.meta == report.meta
    app.run()
    ok(app)
    listed = app.dataframe[0].value
    assert list(listed["kind"]) == ["detox_report"] and list(listed["model"]) == [model.name]
    assert listed["headline"][0].startswith(f"2 items, DS {report.before['DS']:.2f} -> {report.after['DS']:.2f}")
    labels = {m.label: m.value for m in app.metric}
    assert labels["DS after"] == f"{report.after['DS']:.2f}"
    assert labels["over-refusal after"] == f"{report.after['over_refusal']:.1%}"
    items = next(d.value for d in app.dataframe if "DS after" in d.value.columns)
    assert list(items["item"]) == [r["item_id"] for r in report.rows]
    assert list(items["layer"]) == [1, 1]


def test_dinm_auto_edits_at_the_held_out_probes_layer_with_its_settings(app, monkeypatch, tmp_path):
    """As `knowscope detox`: the probe over the bundled items picks the layer (once per model state of the
    tab), the settings tuned at the probe's layer edit there, and the location is shown and saved."""
    import knowscope.circuits as circuits
    from knowscope.editing.dinm import DINMHyperParams
    from knowscope.safeedit import load_bundled_safety
    from knowscope.viewer.common import get_lab

    real, calls = circuits.locate_toxic_layers, []

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(circuits, "locate_toxic_layers", counted)
    model = get_lab("tiny-llama").model
    expected = real(model, load_bundled_safety())
    apply_dinm(app, mode="auto")
    ok(app)
    rep = app.session_state["edit_lab_report"]
    assert rep["edit"].layers == [expected.layer]
    assert torch.equal(rep["toxic_location"].score, expected.score)
    assert rep["edit"].hparams["lr"] == DINMHyperParams.for_probe_layer(model).lr
    assert any(f"Layer {expected.layer}: the held-out probe over {expected.n_items} safety items" in i.value
               for i in app.info)
    app.button(key="lab_undo").click().run()
    app.button(key="lab_apply").click().run()  # the unedited model again: the probe is not run again
    ok(app)
    assert len(calls) == 1
    save_lab(app, "dinm-auto")
    ok(app)
    saved = list((tmp_path / "runs").glob("**/toxic_location"))
    assert len(saved) == 1
    assert circuits.ToxicLocation.load(saved[0]).layer == expected.layer


def test_a_cancelled_tuned_lens_training_caches_nothing(app, monkeypatch, tmp_path):
    import importlib

    from knowscope.viewer.common import get_lab

    tl = importlib.import_module("knowscope.probes.tuned_lens")  # the package's `tuned_lens` is the function
    monkeypatch.setenv("KNOWSCOPE_CACHE", str(tmp_path / "cache"))  # no tuned lens cached yet
    real = tl.tuned_lens
    clicked_cancel = cancelling(real, "lens_train:cancel")

    page(app, "Probes")
    app.radio(key="lens_kind").set_value("tuned lens").run()
    app.number_input(key="lens_tokens").set_value(256).run()
    app.number_input(key="lens_steps").set_value(3).run()
    assert any(c.value.startswith("Estimated time:") and "3 steps" in c.value for c in app.caption)
    monkeypatch.setattr(tl, "tuned_lens", clicked_cancel)
    app.button(key="lens_train").click().run()
    ok(app)
    assert any("Tuned-lens training cancelled" in w.value for w in app.warning)
    assert tl.cached_tuned_lens(get_lab("tiny-llama").model) is None
    assert any("No tuned lens is cached" in i.value for i in app.info)
