"""``knowscope edit`` on a tiny model: JSON fields, undo between facts, sequential mode, saving, errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from knowscope.cli import main
from knowscope.commands.edit import parse_layers
from knowscope.editing.session import EditResult, EditSession
from knowscope.facts import Fact, save_facts
from knowscope.models import load_model

FACTS = [
    Fact(subject="Eiffel Tower", prompt="The {} is located in the city of", target_true="Paris", target_new="Rome",
         case_id=0, paraphrase_prompts=["Eiffel Tower is in"], neighborhood_prompts=["The Louvre is in"],
         generation_prompts=["The Eiffel Tower is"]),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball",
         case_id=1, paraphrase_prompts=["Messi plays"], neighborhood_prompts=["Cristiano Ronaldo plays"]),
    Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico", case_id=2,
         neighborhood_prompts=["Kyoto is in"]),
]
# measured on every fact set (the facts here have no relation-specificity or portability prompts)
MEASURED_KEYS = {"efficacy_score", "paraphrase_score", "neighborhood_score", "rewrite_acc", "locality_acc",
                 "gen_efficacy", "gen_paraphrase", "gen_neighborhood", "gen_locality"}
METRIC_KEYS = {"efficacy_score", "paraphrase_score", "neighborhood_score", "efficacy_magnitude",
               "paraphrase_magnitude", "neighborhood_magnitude", "fluency", "rewrite_acc", "rephrase_acc",
               "locality_acc", "relation_specificity", "relation_specificity_score", "portability_acc",
               "gen_efficacy", "gen_paraphrase", "gen_neighborhood", "gen_locality", "gen_relation_specificity",
               "gen_portability"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("facts") / "facts.json"
    save_facts(FACTS, path)
    return path


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ft_one_fact_at_a_time(data, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = _run(["edit", "--model", "tiny-gpt2", "--method", "ft", "--data", str(data), "--layers", "1",
                              "--gen-len", "12", "--save", str(tmp_path / "saved"), "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["method"] == "ft" and res["layers"] == [1] and res["n_edits"] == 3 and res["n_edit_calls"] == 3
    assert METRIC_KEYS <= set(res["metrics"]) and res["seconds"] > 0
    assert set(res["protocols"]) == {"counterfact", "easyedit", "generation"}
    assert res["metrics"]["gen_efficacy"] is not None and res["metrics"]["relation_specificity"] is None
    assert len(res["per_fact"]) == 3 and res["metrics"]["fluency"] is not None
    assert "CounterFact:" in stdout and "EasyEdit:" in stdout and "Generation:" in stdout
    # one saved EditResult per fact, each made on the unedited model
    model = load_model("tiny-gpt2", device="cpu")
    saved = sorted((tmp_path / "saved" / "edits").iterdir())
    assert len(saved) == 3
    r = EditResult.load(saved[2])
    assert r.method == "ft" and r.requests[0]["requested_rewrite"]["subject"] == "Tokyo"
    assert (tmp_path / "saved" / "metrics" / "meta.json").is_file()
    # reproduce fact 0's efficacy from its saved edit
    from knowscope.editing.evaluation import evaluate

    session = EditSession(model)
    with session.temporary(EditResult.load(saved[0])):
        m = evaluate(model, FACTS[:1], session=session, fluency=False)
    assert m.efficacy_magnitude == pytest.approx(res["per_fact"][0]["efficacy_magnitude"], abs=1e-6)
    assert m.locality_acc == pytest.approx(res["per_fact"][0]["locality_acc"])


def test_ft_sequential_saves_a_session(data, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = _run(["edit", "--model", "tiny-llama", "--method", "ft", "--data", str(data), "--limit", "2",
                         "--sequential", "--no-fluency", "--save", str(tmp_path / "s"), "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["sequential"] and res["n_edits"] == 2 and res["metrics"]["fluency"] is None
    assert res["layers"] == [3]  # FTHyperParams.for_model's layer for a 4-layer Llama
    model = load_model("tiny-llama", device="cpu")
    snap = {k: v.clone() for k, v in model.named_parameters().items()}
    session = EditSession.load(model, tmp_path / "s" / "session")
    try:
        assert len(session.history) == 2
        from knowscope.editing.evaluation import evaluate

        m = evaluate(model, FACTS[:2], session=session, fluency=False)
        assert m.efficacy_magnitude == pytest.approx(res["metrics"]["efficacy_magnitude"], abs=1e-6)
        assert m.locality_acc == pytest.approx(res["metrics"]["locality_acc"])
    finally:
        session.rollback()
    for k, v in model.named_parameters().items():
        assert torch.equal(v, snap[k])


def test_parse_layers():
    assert parse_layers(None) is None
    assert parse_layers("auto") == "auto"
    assert parse_layers("locate") == "locate"
    assert parse_layers("5") == 5
    assert parse_layers("3-6") == [3, 4, 5, 6]
    for bad in ("x", "6-3", "1-", "a-b"):
        with pytest.raises(ValueError, match="--layers"):
            parse_layers(bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "ft", "--limit", "0"], "--limit must be >= 1"),
        (["--method", "ft", "--batch-size", "4"], "--batch-size is for --method memit"),
        (["--method", "rome", "--null-space"], "--null-space is for --method memit"),
        (["--method", "memit", "--layers", "3"], "MEMIT edits a range of layers"),
        (["--method", "ft", "--layers", "9-x"], "--layers '9-x' is not valid"),
        (["--method", "ft", "--layers", "9"], "layer 9 is out of range"),
        (["--method", "ft", "--data", "/no/such/file.json"], "does not exist"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys, data):
    if "--data" not in argv:
        argv = argv + ["--data", str(data)]
    code, _, err = _run(["edit", "--model", "tiny-gpt2", "--no-fluency"] + argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["edit", "--method", "sgd"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("knowscope.editing.memit") is None, reason="MEMIT not written yet")
def test_memit_batches_on_tiny_model(data, tmp_path, capsys, monkeypatch):
    from knowscope.editing.hparams import MEMITHyperParams

    small = MEMITHyperParams(layers=(1, 2), layers_window=2, v_steps=4, stats_tokens=2048, context_lengths=((5, 2),))
    monkeypatch.setattr(MEMITHyperParams, "for_model", classmethod(lambda cls, model: small))  # CI-sized settings
    out = tmp_path / "r.json"
    code, _, err = _run(["edit", "--model", "tiny-gpt2", "--method", "memit", "--data", str(data), "--layers", "1-2",
                         "--batch-size", "2", "--no-fluency", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["n_edits"] == 3 and res["n_edit_calls"] == 2 and res["batch_size"] == 2 and res["layers"] == [1, 2]
    measured = {k for k, v in res["metrics"].items() if v is not None}
    assert res["hparams"]["v_steps"] == 4 and MEASURED_KEYS <= measured
    # sequential null-space batches pile up in one session
    code, _, err = _run(["edit", "--model", "tiny-gpt2", "--method", "memit", "--data", str(data), "--batch-size", "2",
                         "--sequential", "--null-space", "--no-fluency", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["sequential"] and res["null_space"] and res["n_edit_calls"] == 2 and res["hparams"]["null_space"]


def test_memit_run_dir_is_resumable_and_monitored(data, tmp_path, capsys, monkeypatch):
    from knowscope.editing.hparams import MEMITHyperParams

    small = MEMITHyperParams(layers=(1, 2), layers_window=2, v_steps=3, stats_tokens=1024, context_lengths=((5, 2),))
    monkeypatch.setattr(MEMITHyperParams, "for_model", classmethod(lambda cls, model: small))
    probe = tmp_path / "probe.json"
    save_facts([Fact(subject="Rome", prompt="{} is the capital of", target_true="Italy", target_new="France",
                     case_id=9, neighborhood_prompts=["Milan is a city in"])], probe)
    run_dir, out = tmp_path / "run", tmp_path / "r.json"
    base = ["edit", "--model", "tiny-gpt2", "--method", "memit", "--data", str(data), "--batch-size", "1",
            "--sequential", "--null-space", "--no-fluency", "--run-dir", str(run_dir), "--probe", "1",
            "--probe-data", str(probe), "--json", str(out)]
    # first call stops after one batch; the second continues from it and does only the two left
    code, stdout, err = _run([*base, "--max-batches", "1"], capsys)
    assert code == 0, err
    first = json.loads(out.read_text())
    assert first["n_edits"] == 1 and [r["edits"] for r in first["monitor"]] == [0, 1]
    code, stdout, err = _run(base, capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["n_edits"] == 3 and res["n_edit_calls"] == 3 and [r["edits"] for r in res["monitor"]] == [0, 1, 2, 3]
    assert res["monitor"][1] == first["monitor"][1]  # the finished batch was kept, not redone
    assert "[batch 3] 3 edits" in stdout and "[batch 1]" in stdout
    signals = res["monitor"][3]["signals"]
    assert {"update_norm", "efficacy_all", "retention_first", "neighborhood", "locality",
            "probe_accuracy"} <= set(signals)
    assert len(signals["update_norm"]) == 2 and all(v > 0 for v in signals["update_norm"].values())
    assert res["metrics"]["efficacy_score"] is not None and res["null_space"]
    # a run with other settings into the same folder is refused
    code, _, err = _run([*[a if a != "1" else "2" for a in base[:11]], *base[11:]], capsys)
    assert code != 0 and "other settings" in err
    # --run-dir without --sequential MEMIT is refused with a clear message
    code, _, err = _run(["edit", "--model", "tiny-gpt2", "--method", "ft", "--data", str(data), "--run-dir",
                         str(tmp_path / "x")], capsys)
    assert code != 0 and "--run-dir is for --method memit|grace|wise|factkey|ultraedit --sequential" in err


def test_ultraedit_run_dir_is_resumable_and_monitored(data, tmp_path, capsys):
    probe = tmp_path / "probe.json"
    save_facts([Fact(subject="Rome", prompt="{} is the capital of", target_true="Italy", target_new="France",
                     case_id=9, neighborhood_prompts=["Milan is a city in"])], probe)
    run_dir, out = tmp_path / "run", tmp_path / "r.json"
    base = ["edit", "--model", "tiny-gpt2", "--method", "ultraedit", "--data", str(data), "--layers", "1-2",
            "--sequential", "--no-fluency", "--run-dir", str(run_dir), "--probe", "1", "--probe-data", str(probe),
            "--json", str(out)]
    code, _, err = _run([*base, "--max-batches", "1"], capsys)
    assert code == 0, err
    first = json.loads(out.read_text())
    assert first["n_edits"] == 1 and first["layers"] == [1, 2]
    code, stdout, err = _run(base, capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["n_edits"] == 3 and [r["edits"] for r in res["monitor"]] == [0, 1, 2, 3]
    assert res["monitor"][1] == first["monitor"][1] and res["hparams"]["layers"] == [1, 2]
    norms = res["monitor"][3]["signals"]["update_norm"]
    assert len(norms) == 2 and all(v > 0 for v in norms.values())
    assert res["metrics"]["efficacy_score"] is not None
