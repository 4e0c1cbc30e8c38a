"""The Streamlit viewer on tiny models: the runs folder, the shared model's lock, and every page
under ``streamlit.testing`` (AppTest), with assertions on what each page shows."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from viewer_app import APP, apply_dinm, ok, page, save_lab

from knowscope.circuits import circuit_diff, knowledge_circuit, trace
from knowscope.circuits.batches import make_batch
from knowscope.editing import EditSession, rome
from knowscope.editing.evaluation import PredictionTable, evaluate
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.sequential import CollapseMonitor, run_sequential
from knowscope.facts import Fact
from knowscope.probes import activation_shift, logit_lens, probe_layers, train_tuned_lens
from knowscope.viewer.lab import ModelLab, friendly
from knowscope.viewer.runs import describe, load_run, scan_runs, siblings

FACTS = [
    Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy",
         relation_id="P1376", paraphrase_prompts=["The city of Paris is the capital of"],
         neighborhood_prompts=["Lyon is a city in"]),
    Fact(subject="Rome", prompt="{} is the capital of", target_true="Italy", target_new="France",
         relation_id="P1376"),
]
HP = ROMEHyperParams(layer=1, v_steps=4, context_lengths=((4, 2),), stats_tokens=400)


@pytest.fixture(scope="module")
def runs_dir(tiny_llama, tmp_path_factory):
    """A runs folder as the demo and the API leave it: a trace, a circuit, an edit group, probes."""
    root = tmp_path_factory.mktemp("runs")
    model, fact = tiny_llama, FACTS[0]
    trace(model, fact.text, fact.subject, target=fact.true_continuation, samples=2).save(root / "demo" / "trace")
    batch = make_batch(model, FACTS, "noise", scale=1.0)
    before = knowledge_circuit(model, batch, method="eap", sizes=[5, 20, 80])
    before.save(root / "demo" / "circuit")
    session = EditSession(model)
    edit = rome.edit(model, [fact], hparams=HP)
    session.apply(edit)
    after = knowledge_circuit(model, batch, method="eap", sizes=[5, 20, 80])
    session.save(root / "demo" / "edit")
    PredictionTable.compute(model, fact, session).save(root / "demo" / "predictions")
    evaluate(model, [fact], session=session, fluency=False).save(root / "demo" / "metrics")
    activation_shift(session, [fact.text, "Lyon is a city in"]).save(root / "demo" / "shift")
    circuit_diff(before, after).save(root / "demo" / "circuit_diff")
    session.rollback()
    logit_lens(model, fact.text, targets=[" France"]).save(root / "probes" / "lens")
    pos = ["Paris is in France", "Rome is in Italy", "Berlin is in Germany", "Madrid is in Spain"]
    neg = ["two plus two is", "the cat sat on", "one two three", "red green blue"]
    probe_layers(model, pos, neg, test_fraction=0.5).save(root / "probes" / "report")
    train_tuned_lens(model, n_tokens=128, held_out_tokens=64, steps=2, batch_tokens=16, seq_len=32,
                     batch_size=4).save(root / "probes" / "tuned")
    seq_hp = MEMITHyperParams(layers=(1, 2), v_steps=3, context_lengths=((4, 2),), stats_tokens=400)
    run_sequential(model, FACTS[:1], 1, root / "sequential", hparams=seq_hp,
                   monitor=CollapseMonitor(probe=FACTS[1:], fluency_prompts=1))
    from knowscope.sweep import SweepSpec, run_sweep

    sweep_hp = {"rome": {"v_steps": 3, "context_lengths": [[4, 2]], "stats_tokens": 400}}
    run_sweep(SweepSpec("tiny-llama", FACTS, methods=["rome"], layers="0-2", hparams=sweep_hp,
                        trace={"samples": 2}), root / "sweeps" / "rome.sqlite", use_ray=False, model=model,
              progress=False)
    (root / "broken").mkdir()
    (root / "broken" / "meta.json").write_text("{not json")
    (root / ".demo.tmp123").mkdir()  # an unfinished save: hidden, never listed
    (root / ".demo.tmp123" / "meta.json").write_text(json.dumps({"kind": "trace"}))
    return root


@pytest.fixture()
def app(runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KNOWSCOPE_RUNS", str(runs_dir))
    monkeypatch.setenv("KNOWSCOPE_MODEL", "tiny-llama")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return at


def keyed(widgets, suffix, prefix="explorer-"):
    """The circuit explorer's widget whose key (which names the circuit shown) ends with ``suffix``."""
    found = [w for w in widgets if (w.key or "").startswith(prefix) and w.key.endswith(suffix)]
    assert len(found) == 1, [w.key for w in widgets]
    return found[0]


def metric(at, label):
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; metrics: {[m.label for m in at.metric]}"
    return found[0]


def charts(at):
    """The plotly figures on the page, as dicts."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def trace_types(fig):
    return [t.get("type") for t in fig["data"]]


# ---------------------------------------------------------------------------------------------
# runs folder and the shared model (no Streamlit)


def test_scan_runs_lists_every_result_and_skips_the_rest(runs_dir):
    found = scan_runs(runs_dir)
    kinds = sorted(r.kind for r in found)
    assert kinds == sorted(["trace", "circuit", "edit_session", "predictions", "edit_metrics", "activation_shift",
                            "circuit_diff", "logit_lens", "probe_report", "tuned_lens", "sequential_run"])
    assert all(".demo.tmp" not in str(r.path) and r.name != "broken" for r in found)
    tr = next(r for r in found if r.kind == "trace")
    assert tr.group == "demo" and tr.model == "tiny-llama" and "clean" in tr.headline and tr.date
    metrics = next(r for r in found if r.kind == "edit_metrics")
    assert "efficacy" in metrics.headline
    assert set(siblings(next(r for r in found if r.kind == "edit_session"), found)) >= {
        "predictions", "edit_metrics", "activation_shift", "circuit_diff", "trace", "circuit"}
    for r in found:
        assert load_run(r.path) is not None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_runs(runs_dir / "nowhere")
    with pytest.raises(ValueError, match="not valid JSON"):
        describe(runs_dir / "broken")


def test_model_lab_never_leaves_the_shared_model_edited(tiny_llama):
    lab = ModelLab(tiny_llama)
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters().items()}
    name = tiny_llama.arch.mlp_out_name(1)
    deltas = [torch.full_like(before[name], 0.01 * (i + 1)) for i in range(2)]
    from knowscope.editing import EditResult

    edits = [EditResult(method="test", deltas={name: d}, fingerprint=tiny_llama.fingerprint, layers=[1])
             for d in deltas]
    seen, errors = [], []

    def tab(i):
        try:
            for _ in range(5):
                with lab.use([edits[i]]) as (model, _):
                    w = model.named_parameters()[name].detach()
                    seen.append(torch.allclose(w - before[name], deltas[i], atol=1e-6))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 10 and all(seen)  # each tab saw exactly its own edit
    with pytest.raises(RuntimeError, match="half way"), lab.use(edits) as (_, session):
        session.apply(edits[0])
        raise RuntimeError("a page failed half way")
    with pytest.raises(RuntimeError, match="re-entrant"), lab.use(edits[:1]), lab.use():
        pass
    after = tiny_llama.named_parameters()
    assert all(torch.equal(after[n], before[n]) for n in before)  # bit for bit
    assert not lab.session.history


def test_friendly_errors_say_what_to_change():
    assert "Change the inputs" in friendly(ValueError("subject 'X' is not in the prompt"))
    assert "traceback" in friendly(RuntimeError("boom")) and "Traceback (most recent" not in friendly(RuntimeError("x"))


# ---------------------------------------------------------------------------------------------
# pages


def test_runs_page_opens_each_saved_result_without_the_model(runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import knowscope.models
    from knowscope.viewer.common import get_lab

    def no_model(*args, **kwargs):
        raise AssertionError("the Runs page must draw saved results without loading a model")

    get_lab.clear()
    monkeypatch.setattr(knowscope.models, "load_model", no_model)
    monkeypatch.setenv("KNOWSCOPE_RUNS", str(runs_dir))
    monkeypatch.setenv("KNOWSCOPE_MODEL", "tiny-llama")
    app = AppTest.from_file(APP, default_timeout=300)
    app.run()
    ok(app)
    table = app.dataframe[0].value
    assert len(table) == 11 and set(table["kind"]) >= {"trace", "circuit", "edit_session"}
    options = app.selectbox(key="runs_open").options
    for label in options:
        app.selectbox(key="runs_open").set_value(
            next(o for o in app.selectbox(key="runs_open").options if o == label)).run()
        ok(app)
        kind = label.split("[")[1].split("]")[0]
        figs = charts(app)
        if kind == "trace":
            saved = load_run(runs_dir / "demo" / "trace")
            assert metric(app, "p(answer), clean") == f"{saved.high_score:.3f}"
            assert "heatmap" in trace_types(figs[0])
            assert metric(app, "located layer (MLP, last subject token)") == str(saved.located_layer())
        elif kind == "circuit":
            saved = load_run(runs_dir / "demo" / "circuit")
            assert metric(app, "edges in the circuit") == f"{saved.n_edges:,} of {saved.n_edges_total:,}"
            assert metric(app, "faithfulness") == f"{saved.faithfulness:.2f}"
            assert len(figs) == 2  # graph + faithfulness curve
            # a size the circuit did not save: no model on this page, so it says so instead of a number
            app.select_slider(key="runs-demo-circuit-n").set_value(50).run()
            assert metric(app, "faithfulness") == "not measured"
            app.select_slider(key="runs-demo-circuit-n").set_value(saved.n_edges).run()
        elif kind == "edit_session":
            # the edit with its group: predictions, metrics, activation shift, circuit diff
            frames = [d.value for d in app.dataframe]
            assert any("before" in f.columns and "after" in f.columns for f in frames)
            assert metric(app, "efficacy_score") != "n/a"
            assert len(figs) == 3
        elif kind == "logit_lens":
            assert "heatmap" in trace_types(figs[0])
        elif kind == "sequential_run":
            assert metric(app, "edits") == "1 of 1"
            assert len(figs) == 1 and "scatter" in trace_types(figs[0])
            rows = [d.value for d in app.dataframe if "neighborhood" in d.value.columns][0]
            assert list(rows["edits"]) == [0, 1]
        elif kind == "tuned_lens":
            assert len(figs) == 1 and trace_types(figs[0]).count("scatter") == 4  # KL + top-1, two lenses


def test_trace_page_runs_a_trace_and_reports_errors(app, runs_dir):
    page(app, "Causal trace")
    app.radio(key="trace_source").set_value("my prompt").run()
    app.text_input(key="trace_prompt").input("Paris is the capital of").run()
    app.text_input(key="trace_subject").input("Paris").run()
    app.text_input(key="trace_target").input("France").run()
    app.number_input(key="trace_samples").set_value(2).run()
    app.button(key="trace_run").click().run()
    ok(app)
    fig = charts(app)[0]
    assert trace_types(fig).count("heatmap") == 3
    assert float(metric(app, "p(answer), clean")) > 0
    summary = [d.value for d in app.dataframe][0]
    assert set(summary["kind"]) == {"hidden", "mlp", "attn"} and "last_subject" in set(summary["token_class"])
    app.button(key="trace_save").click().run()
    ok(app)
    assert list((runs_dir / "viewer").glob("*trace-Paris/meta.json"))
    # a subject that is not in the prompt: a message, not a traceback
    app.text_input(key="trace_subject").input("Berlin").run()
    app.button(key="trace_run").click().run()
    assert not app.exception and app.error and "failed" in app.error[0].value
    # a saved trace opens without tracing
    app.radio(key="trace_source").set_value("saved trace").run()
    ok(app)
    assert charts(app)


def test_circuit_explorer_resizes_measures_pins_and_inspects_a_node(app, runs_dir):
    from knowscope.circuits import prune
    from knowscope.circuits.resize import Resizer
    from knowscope.viewer.common import get_lab

    page(app, "Circuit explorer")
    ok(app)
    saved = load_run(runs_dir / "demo" / "circuit")
    assert metric(app, "edges in the circuit") == f"{saved.n_edges:,} of {saved.n_edges_total:,}"
    assert metric(app, "faithfulness") == f"{saved.faithfulness:.2f}"
    graph = charts(app)[0]
    assert graph["layout"]["title"]["text"].startswith(f"{saved.n_edges} of {saved.n_edges} circuit edges drawn")
    # a size on the saved curve reads the curve; one off it is measured on the model (and cached)
    keyed(app.select_slider, "-n").set_value(20).run()
    ok(app)
    at20 = saved.curve["faithfulness"][saved.curve["n_edges_requested"].index(20)]
    assert metric(app, "faithfulness") == f"{at20:.2f}"
    keyed(app.select_slider, "-n").set_value(50).run()
    ok(app)
    shown = int(metric(app, "edges in the circuit").split()[0])
    assert 0 < shown <= 50  # top 50, minus edges left dangling
    resizer = Resizer(get_lab("tiny-llama").model, saved)
    assert resizer.mismatch is not None and resizer.mismatch < 1e-6  # the saved batch rebuilt as it was
    expected = resizer.faithfulness(prune(saved.graph, saved.scores, top_n=50))
    assert metric(app, "faithfulness") == f"{expected:.2f}"
    assert any("measured now" in c.value for c in app.caption)
    # fewer edges drawn than kept: the title says so
    keyed(app.number_input, "-draw").set_value(3).run()
    assert charts(app)[0]["layout"]["title"]["text"].startswith(f"3 of {shown} circuit edges drawn")
    keyed(app.radio, "-mode").set_value("score threshold").run()
    ok(app)
    # the threshold starts at the saved circuit's weakest edge, not at a handful of edges
    assert int(metric(app, "edges in the circuit").split()[0]) >= saved.n_edges // 2
    keyed(app.radio, "-mode").set_value("top-n edges").run()
    keyed(app.select_slider, "-n").set_value(saved.n_edges).run()
    # pin a head: its edges are highlighted, listed, and it can be read on the model
    heads = [n for n in keyed(app.selectbox, "-pin").options if n.startswith("a")]
    assert heads, "the circuit should use at least one head"
    keyed(app.selectbox, "-pin").set_value(heads[0]).run()
    ok(app)
    assert any(m.value.startswith(f"**Pinned: {heads[0]}**") for m in app.markdown)
    assert any(t.get("name") == f"edges of {heads[0]}" for t in charts(app)[0]["data"])
    app.button(key="circuit_inspect").click().run()
    ok(app)
    assert metric(app, f"role of {heads[0]}") in ("mover", "relation", "object_writer", "other")
    figs = charts(app)
    assert any(f["data"][0].get("type") == "heatmap" and "attention" in json.dumps(f["layout"]) for f in figs)
    assert any(f["data"][0].get("type") == "bar" and "unembedding" in json.dumps(f["layout"]) for f in figs)


def test_circuit_explorer_computes_a_circuit(app):
    page(app, "Circuit explorer")
    app.radio(key="circuit_source").set_value("compute one").run()
    app.number_input(key="circuit_n").set_value(1).run()
    app.selectbox(key="circuit_method").set_value("eap").run()
    app.selectbox(key="circuit_corruption").set_value("noise").run()
    app.button(key="circuit_run").click().run()
    ok(app)
    assert "of" in metric(app, "edges in the circuit") and len(charts(app)) >= 2


@pytest.mark.parametrize("method,layer_mode,diff", [("ROME", "choose", True), ("MEMIT", "choose", False),
                                                     ("FT", "located", False)])
def test_edit_lab_applies_undoes_and_saves_without_editing_the_shared_model(app, runs_dir, method, layer_mode, diff):
    from knowscope.viewer.common import get_lab

    page(app, "Edit lab")
    app.radio(key="lab_method").set_value(method).run()
    app.radio(key="lab_layer_mode").set_value(layer_mode).run()
    app.number_input(key="lab_layer").set_value(2).run()
    app.number_input(key="lab_v_steps").set_value(4).run()
    app.number_input(key="lab_stats").set_value(400).run()
    app.number_input(key="lab_samples").set_value(1).run()
    if diff:
        app.checkbox(key="lab_diff").check().run()
    shared = get_lab("tiny-llama").model
    before = {n: p.detach().clone() for n, p in shared.named_parameters().items()}
    app.button(key="lab_apply").click().run()
    ok(app)
    assert any("This tab's edits: 1" in m.value for m in app.markdown)
    frames = [d.value for d in app.dataframe]
    assert any({"before", "after", "kind"} <= set(f.columns) for f in frames)
    assert metric(app, "efficacy_score") != "n/a"
    assert any("Activation shift" in json.dumps(f["layout"]) for f in charts(app))
    assert any(f"{method.lower()} at layers" in h.value for h in app.subheader)
    if diff:
        assert any("circuit diff" in json.dumps(f["layout"]) for f in charts(app))
    now = shared.named_parameters()
    assert all(torch.equal(now[n], before[n]) for n in before)  # the shared model is not left edited
    save_lab(app, f"lab-{method}")
    ok(app)
    saved = [p for p in (runs_dir / "viewer").iterdir() if p.name.endswith(f"lab-{method}")]
    assert len(saved) == 1
    expected = {"edit", "predictions", "metrics", "shift"} | ({"circuit_diff"} if diff else set())
    assert expected <= {c.name for c in saved[0].iterdir()}
    assert {r.kind for r in scan_runs(saved[0])} >= {"edit_session", "predictions", "edit_metrics", "activation_shift"}
    app.button(key="lab_undo").click().run()
    ok(app)
    assert any("This tab's edits: 0" in m.value for m in app.markdown)


@pytest.mark.parametrize("method", ["GRACE", "FactKey"])
def test_edit_lab_memory_edit_shows_routing(app, method):
    """A memory edit in the lab: the metrics show how each prompt was routed; the shared model carries no
    memory afterwards."""
    from knowscope.editing.memory import memory_of
    from knowscope.viewer.common import get_lab

    page(app, "Edit lab")
    app.radio(key="lab_method").set_value(method).run()
    app.radio(key="lab_layer_mode").set_value("choose").run()
    app.number_input(key="lab_layer").set_value(2).run()
    app.button(key="lab_apply").click().run()
    ok(app)
    assert any(f"{method.lower()} at layers [2]" in h.value for h in app.subheader)
    assert any(f"Routing of the {method.upper()} memory" in json.dumps(f["layout"]) for f in charts(app))
    assert any({"kind", "memory", "score", "threshold", "routed"} <= set(d.value.columns) for d in app.dataframe)
    assert memory_of(get_lab("tiny-llama").model) is None


def test_an_edit_in_the_lab_is_the_model_every_page_reads(app):
    """Locate -> edit -> re-locate in the viewer: after a ROME edit in the lab, the trace and lens pages
    read the edited model (before | after side by side, one colour scale), and the sidebar's switch
    takes them back to the unedited one."""
    from knowscope.facts import load_bundled_facts

    fact = load_bundled_facts()[0]
    page(app, "Edit lab")
    app.radio(key="lab_method").set_value("ROME").run()
    app.radio(key="lab_layer_mode").set_value("choose").run()
    app.number_input(key="lab_layer").set_value(1).run()
    app.number_input(key="lab_v_steps").set_value(4).run()
    app.number_input(key="lab_stats").set_value(400).run()
    app.button(key="lab_apply").click().run()
    ok(app)
    summary = f"ROME at layer 1: {fact.subject}: {fact.target_true} → {fact.target_new}"
    assert any(summary in m.value for m in app.markdown)  # readable, not a repr
    assert not any("EditResult(" in m.value for m in app.markdown)
    assert app.sidebar.radio(key="model_state").value == "edited"
    page(app, "Causal trace")
    app.number_input(key="trace_samples").set_value(2).run()
    app.button(key="trace_run").click().run()
    ok(app)
    heat = [f for f in charts(app) if "heatmap" in trace_types(f)]
    assert len(heat) == 2  # before | after
    ranges = {(t["zmin"], t["zmax"]) for f in heat for t in f["data"]}
    assert len(ranges) == 1  # one colour scale for both traces and all their panels
    labels = [m.value for m in app.markdown if m.value.startswith("**before") or m.value.startswith("**after")]
    assert labels[0].startswith("**before: unedited") and summary in labels[1]
    assert len([m for m in app.metric if m.label == "p(answer), clean"]) == 2
    assert heat[0]["data"][0]["z"] != heat[1]["data"][0]["z"]  # the after trace reads the edited model
    page(app, "Probes")
    app.text_input(key="lens_prompt").input(fact.text).run()
    app.button(key="lens_run").click().run()
    ok(app)
    lenses = [f for f in charts(app) if "heatmap" in trace_types(f)]
    assert len(lenses) == 2 and lenses[0]["data"][0]["z"] != lenses[1]["data"][0]["z"]
    # the switch: unedited, one trace on the unedited model
    app.sidebar.radio(key="model_state").set_value("unedited").run()
    page(app, "Causal trace")
    app.button(key="trace_run").click().run()
    ok(app)
    assert len([f for f in charts(app) if "heatmap" in trace_types(f)]) == 1
    assert any(m.value == "**on the unedited model**" for m in app.markdown)


def test_a_saved_edit_loaded_from_runs_is_the_model_every_page_reads(app, runs_dir):
    page(app, "Runs")
    box = app.selectbox(key="runs_open")
    box.set_value(next(o for o in box.options if o.startswith("demo/edit ") and "[edit_session]" in o)).run()
    app.button(key="runs_use_edit").click().run()
    ok(app)
    assert any("every page now reads the model edited by: ROME at layer 1" in s.value for s in app.success)
    assert app.sidebar.radio(key="model_state").value == "edited"
    page(app, "Probes")
    app.button(key="lens_run").click().run()
    ok(app)
    assert len([f for f in charts(app) if "heatmap" in trace_types(f)]) == 2  # before | after


def test_edit_lab_refuses_a_weight_edit_over_a_memory_edit_before_computing(app, monkeypatch):
    import knowscope.editing.editors as editors

    page(app, "Edit lab")
    app.radio(key="lab_method").set_value("GRACE").run()
    app.radio(key="lab_layer_mode").set_value("choose").run()
    app.number_input(key="lab_layer").set_value(2).run()
    app.button(key="lab_apply").click().run()
    ok(app)

    def no_editor(*args, **kwargs):
        raise AssertionError("a refused edit must not be computed")

    monkeypatch.setattr(editors, "get_editor", no_editor)
    app.radio(key="lab_method").set_value("ROME").run()
    app.button(key="lab_apply").click().run()
    assert not app.exception and app.error
    msg = app.error[0].value
    assert "Undo the memory edit" in msg and "--model" not in msg and "GRACE at layer 2" in msg
    assert any("This tab's edits: 1" in m.value for m in app.markdown)


def test_edit_lab_detoxifies_a_safety_item(app):
    apply_dinm(app)
    ok(app)
    for when in ("before", "after"):  # counts, not "1.0 of 5"
        assert metric(app, f"judged safe {when}") in {f"{n} of 5" for n in range(6)}
    rows = app.session_state["edit_lab_report"]["predictions"].rows
    assert [r["kind"] for r in rows] == ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"]
    assert len(app.code) == 2 * len(rows)  # before above after, each response wrapped (test_viewer_lab)


def test_probes_page_lens_and_saved_probe(app, runs_dir):
    page(app, "Probes")
    ok(app)
    report = load_run(runs_dir / "probes" / "report")
    layer, acc = report.best("logistic")
    assert metric(app, "best logistic") == f"{acc:.2f}"
    app.text_input(key="lens_prompt").input("Paris is the capital of").run()
    app.text_input(key="lens_target").input("France").run()
    app.button(key="lens_run").click().run()
    ok(app)
    first = metric(app, "first layer where ␣France is top-1")
    assert first == "never" or first.endswith("of 3")
    assert metric(app, "logit lens: the model's answer")
    assert any("heatmap" in trace_types(f) for f in charts(app))


def test_probes_page_trains_the_tuned_lens_and_shows_both(app, monkeypatch, tmp_path):
    monkeypatch.setenv("KNOWSCOPE_CACHE", str(tmp_path / "cache"))  # no tuned lens cached yet
    page(app, "Probes")
    app.radio(key="lens_kind").set_value("both").run()
    ok(app)
    assert any("No tuned lens is cached" in i.value for i in app.info)
    app.number_input(key="lens_tokens").set_value(256).run()
    app.number_input(key="lens_steps").set_value(3).run()
    app.button(key="lens_train").click().run()
    ok(app)
    assert not any("No tuned lens is cached" in i.value for i in app.info)
    app.text_input(key="lens_prompt").input("Paris is the capital of").run()
    app.text_input(key="lens_target").input("France").run()
    app.button(key="lens_run").click().run()
    ok(app)
    firsts = [m.value for m in app.metric if m.label == "first layer where ␣France is top-1"]
    assert len(firsts) == 2 and all(f == "never" or f.endswith("of 3") for f in firsts)
    titles = [f["layout"]["title"]["text"] for f in charts(app) if "heatmap" in trace_types(f)]
    assert any(t.startswith("Logit lens") for t in titles) and any(t.startswith("Tuned lens") for t in titles)


def test_sweeps_page_shows_a_store(app, runs_dir):
    from knowscope.sweep import SweepResult

    page(app, "Sweeps")
    ok(app)
    res = SweepResult.load(runs_dir / "sweeps" / "rome.sqlite")
    assert metric(app, "located layer (locate)") == str(res.located_layer())
    assert metric(app, "best layer (CounterFact score)") == str(res.best_layer("rome"))
    assert metric(app, "cells") == "6 of 6"
    figs = charts(app)
    assert len(figs) == 2 and "scatter" in trace_types(figs[1])
    frames = [d.value for d in app.dataframe]
    assert len(frames[0]) == 15 and "pooled ρ" in frames[0].columns  # 3 kinds x 5 metrics
    app.selectbox(key="sweep_fact").set_value(1).run()
    ok(app)
    assert list([d.value for d in app.dataframe][1]["layer"]) == [0, 1, 2]
    app.text_input(key="sweep_path").set_value(str(runs_dir / "broken" / "meta.json")).run()
    assert not app.exception and app.error and "not a knowscope sweep store" in app.error[0].value


def test_a_missing_runs_folder_is_a_message(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KNOWSCOPE_RUNS", str(tmp_path / "none"))
    monkeypatch.setenv("KNOWSCOPE_MODEL", "tiny-llama")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and at.warning and "knowscope demo" in at.warning[0].value

