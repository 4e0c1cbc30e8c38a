"""Nothing lost, nothing silent (issue #14): saves never delete what knowscope did not write, are atomic
under kills and concurrent writers, and bad input gets one clear line instead of a wrong result."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest
import torch
from cli_run import run_cli as _cli

from knowscope.editing import EditMismatchError, EditResult, EditSession
from knowscope.facts import Fact, FactFormatError, save_facts
from knowscope.models import ModelLoadError, compute_fingerprint, tiny_model
from knowscope.results import ResultFormatError, SaveRefusedError, load_dir, save_dir
from knowscope.viewer.runs import scan_runs

# --- 1, 2: saving never deletes what knowscope did not write; a save replaces its whole result ----

def test_save_refuses_a_user_folder_and_keeps_its_files(tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("precious")
    (user / "sub" / "data.csv").write_text("1,2")
    code, _, err = _cli(["lens", "--model", "tiny-llama", "--prompt", "The capital", "--save", str(user)], capsys)
    assert code == 2 and "did not write" in err and len(err.strip().splitlines()) == 1
    assert (user / "notes.txt").read_text() == "precious" and (user / "sub" / "data.csv").read_text() == "1,2"
    with pytest.raises(SaveRefusedError):
        save_dir(user, "trace", {}, {}, overwrite=True)  # not even with overwrite
    assert (user / "notes.txt").read_text() == "precious"


def test_save_onto_a_file_is_refused_before_computing(tmp_path, capsys):
    f = tmp_path / "result"
    f.write_text("a file")
    # a model that does not exist: the save path is refused first, so nothing was computed
    code, _, err = _cli(["lens", "--model", str(tmp_path / "no-model"), "--prompt", "x", "--save", str(f)], capsys)
    assert code == 2 and "is not a folder" in err
    assert f.read_text() == "a file"


def test_other_kind_needs_overwrite_same_kind_is_replaced(tmp_path):
    p = tmp_path / "r"
    save_dir(p, "trace", {"a": 1}, {"x": torch.ones(2)})
    save_dir(p, "trace", {"a": 2}, {"x": torch.zeros(2)})  # same kind: replaced
    assert load_dir(p)[0]["a"] == 2
    with pytest.raises(SaveRefusedError, match="overwrite"):
        save_dir(p, "circuit", {"b": 1}, {})
    save_dir(p, "circuit", {"b": 1}, {}, overwrite=True)
    assert load_dir(p)[0]["kind"] == "circuit"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r"]  # no temporaries or lock files left beside it


def test_edit_save_twice_replaces_the_whole_group(tmp_path, capsys):
    facts = [Fact(subject=s, prompt="{} is located in", target_true="Paris", target_new="Rome")
             for s in ("Tokyo", "Berlin", "Madrid")]
    data3, data1 = tmp_path / "f3.json", tmp_path / "f1.json"
    save_facts(facts, data3)
    save_facts(facts[:1], data1)
    out = tmp_path / "run"
    base = ["edit", "--model", "tiny-gpt2", "--method", "ft", "--layers", "1", "--no-fluency", "--save", str(out)]
    assert _cli(base + ["--data", str(data3)], capsys)[0] == 0
    assert sorted(p.name for p in (out / "edits").iterdir()) == ["0000", "0001", "0002"]
    assert _cli(base + ["--data", str(data1)], capsys)[0] == 0
    assert sorted(p.name for p in (out / "edits").iterdir()) == ["0000"]
    assert len(json.loads((out / "metrics" / "meta.json").read_text())["data"]["per_fact"]) == 1


# --- 3: no silent truncation --------------------------------------------------------------------

def test_prompt_longer_than_context_is_refused(tiny_gpt2, capsys):
    long = "word " * 400
    with pytest.raises(ValueError, match="reads at most 128 tokens"):
        tiny_gpt2.to_tokens(long)
    code, _, err = _cli(["predict", "--model", "tiny-gpt2", "--prompt", long + "a"], capsys)
    assert code == 2 and "128" in err


# --- 4: deltas that would break the weights --------------------------------------------------------

def _edit(model, name, delta):
    return EditResult(method="ft", model_name=model.name, fingerprint=model.fingerprint, layers=[1],
                      deltas={name: delta}, requests=[], hparams={}, seconds=0.0)


def test_overflowing_and_implausible_deltas_are_refused(tiny_gpt2):
    name = tiny_gpt2.arch.mlp_out_name(1)
    w = tiny_gpt2.named_parameters()[name]
    before = w.detach().clone()
    session = EditSession(tiny_gpt2)
    for delta in (torch.full(w.shape, 1e300, dtype=torch.float64), torch.full(w.shape, 1e30, dtype=torch.float64),
                  torch.full(w.shape, float("nan"))):
        with pytest.raises(EditMismatchError, match="refusing"):
            session.apply(_edit(tiny_gpt2, name, delta))
        assert torch.equal(w, before)
    session.apply(_edit(tiny_gpt2, name, torch.full(w.shape, 1e-3)))  # a plausible one applies
    session.undo()
    assert torch.equal(w, before)


# --- 5: the fingerprint sees every weight -----------------------------------------------------------

def test_fingerprint_hashes_every_entry_and_is_stable():
    a, b = tiny_model("llama"), tiny_model("llama")
    assert a.fingerprint == b.fingerprint == compute_fingerprint(a)
    w = a.mlp_out_weight(2)
    with torch.no_grad():
        w.view(-1)[-1] += 1e-6  # one entry of one matrix
    assert compute_fingerprint(a) != b.fingerprint
    with torch.no_grad():
        w.view(-1)[-1] -= 1e-6
    assert compute_fingerprint(a) == b.fingerprint


# --- 6: one edit ledger per model ---------------------------------------------------------------------

def test_second_session_on_an_edited_model_is_refused(tiny_gpt2):
    name = tiny_gpt2.arch.mlp_out_name(1)
    w = tiny_gpt2.named_parameters()[name]
    before = w.detach().clone()
    s1, s2 = EditSession(tiny_gpt2), EditSession(tiny_gpt2)
    s1.apply(_edit(tiny_gpt2, name, torch.full(w.shape, 1e-3)))
    with pytest.raises(EditMismatchError, match="another EditSession"):
        s2.apply(_edit(tiny_gpt2, name, torch.full(w.shape, 2e-3)))
    s1.undo()
    assert torch.equal(w, before)
    s2.apply(_edit(tiny_gpt2, name, torch.full(w.shape, 2e-3)))  # free again once s1 holds no edit
    s2.undo()
    assert torch.equal(w, before)


# --- 7: concurrent writers ------------------------------------------------------------------------------

def _writer(args):
    path, worker, n = args
    failures = 0
    for i in range(n):
        try:
            save_dir(path, "trace", {"worker": worker, "i": i}, {"x": torch.full((64,), float(i))})
            meta, arrays = load_dir(path, "trace")
            assert float(arrays["x"][0]) == meta["i"]
        except Exception:  # noqa: BLE001 - counted
            failures += 1
    return failures


def test_two_processes_saving_one_folder_never_fail(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        failures = pool.map(_writer, [(str(tmp_path / "shared"), w, 150) for w in range(2)])
    assert failures == [0, 0]
    assert load_dir(tmp_path / "shared", "trace")[0]["i"] == 149
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


# --- 8: kills at every step of a save -------------------------------------------------------------------

KILL = """
import os, sys, torch
from knowscope import results
step = sys.argv[2]
results._STEP = lambda s: os._exit(9) if s == step else None
results.save_dir(sys.argv[1], "trace", {"v": "new"}, {"x": torch.ones(3)})
"""


@pytest.mark.parametrize("step", ["written", "moved-aside", "swapped", "done"])
def test_a_killed_save_leaves_the_old_or_the_new_result(tmp_path, step):
    target = tmp_path / "r"
    save_dir(target, "trace", {"v": "old"}, {"x": torch.zeros(3)})
    proc = subprocess.run([sys.executable, "-c", KILL, str(target), step], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    meta, arrays = load_dir(target, "trace")  # recovers if needed
    assert meta["v"] in ("old", "new")
    assert (meta["v"] == "new") == (step in ("swapped", "done"))
    assert float(arrays["x"].sum()) == (3.0 if meta["v"] == "new" else 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # the killed save's temporaries are gone
    save_dir(target, "trace", {"v": "again"}, {})
    assert load_dir(target)[0]["v"] == "again"


# --- 9: crafted runs: one bad run is skipped, links do not lead out ------------------------------------

def test_scan_skips_a_deeply_nested_meta_and_keeps_the_others(tmp_path):
    runs = tmp_path / "runs"
    save_dir(runs / "good", "trace", {"prompt": "p"}, {})
    (runs / "evil").mkdir()
    (runs / "evil" / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    outside = tmp_path / "outside"
    save_dir(outside / "secret", "trace", {"prompt": "s"}, {})
    os.symlink(outside, runs / "link")
    found = scan_runs(runs)
    assert [r.path.name for r in found] == ["good"]
    with pytest.raises(ResultFormatError, match="nested too deeply"):
        load_dir(runs / "evil")


@pytest.mark.parametrize("meta, arrays, match", [
    ("[1, 2]", None, "holds a JSON list"),
    ('{"kind": "trace", "format_version": 99}', None, "upgrade knowscope"),
    ('{"kind": "trace"}', b"\x80\x04\x95pickle", "not a readable safetensors"),
    ('{"kind": "trace"}', b"\x10\x00\x00\x00\x00\x00\x00\x00{\"x\": {\"dtype\"", "not a readable safetensors"),
])
def test_crafted_result_folders_get_a_clear_error(tmp_path, meta, arrays, match):
    d = tmp_path / "r"
    d.mkdir()
    (d / "meta.json").write_text(meta)
    if arrays is not None:
        (d / "arrays.safetensors").write_bytes(arrays)
    with pytest.raises(ResultFormatError, match=match):
        load_dir(d)


# --- clear one-line errors ---------------------------------------------------------------------------------

def test_bad_inputs_get_one_line_and_exit_2(tmp_path, capsys):
    bad_template = tmp_path / "t.json"
    bad_template.write_text(json.dumps([{"subject": "X", "prompt": "{} is in {name}", "target_true": "A",
                                         "target_new": "B"}]))
    latin1 = tmp_path / "l.json"
    latin1.write_bytes(b'[{"subject": "X", "prompt": "{} caf\xe9", "target_true": "A", "target_new": "B"}]')
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps([{"subject": "X", "prompt": "{} " + "word " * 6000, "target_true": "A",
                                 "target_new": "B"}]))
    badcfg = tmp_path / "badcfg"
    badcfg.mkdir()
    (badcfg / "config.json").write_text("{bad")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["The capital of France is"]))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "gpt2"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    cases = [
        (["info", "--model", "tiny-gpt2", "--device", "bogus"], "unknown device 'bogus'"),
        (["info", "--model", "tiny-gpt2", "--device", "cuda"], "use --device cpu"),
        (["lens", "--model", "tiny-llama", "--prompt", "x", "--top-k", "100000"], "at most 1000"),
        (["lens", "--model", "tiny-llama", "--prompt", "x", "--json", str(tmp_path)], "is a folder"),
        (["facts", "--model", "tiny-llama", "--data", str(bad_template)], "format field {name}"),
        (["facts", "--model", "tiny-llama", "--data", str(latin1)], f"{latin1} is not UTF-8"),
        (["facts", "--model", "tiny-llama", "--data", str(huge)], "one sentence"),
        (["facts", "--model", "tiny-llama", "--data", str(tmp_path)], "is a folder"),
        (["facts", "--model", "tiny-llama", "--data", str(tmp_path / "nope.json")], "does not exist"),
        (["info", "--model", str(badcfg)], "config.json is not valid JSON"),
        (["info", "--model", str(pickled)], "only pickle weights"),
        (["shift", "--model", "tiny-llama", "--edit", str(tmp_path / "missing"), "--prompts", str(prompts)],
         "does not exist"),
        (["shift", "--model", "tiny-llama", "--edit", str(badcfg), "--prompts", str(prompts)],
         "not a knowscope result folder"),
    ]
    for argv, needle in cases:
        code, _, err = _cli(argv, capsys)
        assert code == 2, (argv, err)
        assert needle in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)


def test_offline_judge_fails_fast(monkeypatch):
    import time

    from knowscope.safety.judge import get_judge

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        get_judge("someone/safety-classifier")
    assert time.perf_counter() - started < 5


def test_fact_validation_in_the_api():
    with pytest.raises(FactFormatError, match="format field"):
        Fact(subject="X", prompt="{} {0}", target_true="a", target_new="b")
    assert Fact(subject="X", prompt="{} uses {{braces}}", target_true="a", target_new="b").text == "X uses {braces}"


def test_viewer_sends_no_usage_statistics():
    from knowscope.viewer import command, environment

    cmd = command()
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert environment()["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] == "false"


# --- one result protocol: registry, envelope, versions ---------------------------------------------------

def test_registry_envelope_and_versions(tmp_path, tiny_gpt2):
    import knowscope.circuits  # noqa: F401 - importing the packages registers their kinds
    import knowscope.editing.evaluation  # noqa: F401
    import knowscope.probes  # noqa: F401
    from knowscope.circuits import trace
    from knowscope.results import headline, load_result, registered

    kinds = set(registered())
    assert {"trace", "trace_facts", "layer_choice", "circuit", "circuit_diff", "toxic_region", "edit", "edit_session",
            "edit_metrics", "predictions", "activation_shift", "logit_lens", "probe_report", "linear_probe",
            "steering_vector"} <= kinds
    tr = trace(tiny_gpt2, "Lionel Messi plays soccer in", "Lionel Messi", samples=1, kinds="hidden")
    tr.save(tmp_path / "t")
    body = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert set(body) == {"kind", "format_version", "data", "checksums"} and body["format_version"] == 2
    again = load_result(tmp_path / "t")
    assert torch.equal(again.scores["hidden"].nan_to_num(), tr.scores["hidden"].nan_to_num())
    assert "Lionel Messi" in headline("trace", {**body["data"], "kind": "trace"})
    # a result saved before the envelope (format_version 1: fields beside kind) still loads
    old = tmp_path / "old"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"kind": "trace", "format_version": 1, **body["data"]}))
    (old / "arrays.safetensors").write_bytes((tmp_path / "t" / "arrays.safetensors").read_bytes())
    assert torch.equal(load_result(old).scores["hidden"].nan_to_num(), tr.scores["hidden"].nan_to_num())
    # a newer format is refused with what to do; a non-object 'data' is named
    (old / "meta.json").write_text(json.dumps({"kind": "trace", "format_version": 3, "data": {}}))
    with pytest.raises(ResultFormatError, match="upgrade knowscope"):
        load_result(old)
    (old / "meta.json").write_text(json.dumps({"kind": "trace", "format_version": 2, "data": [1]}))
    with pytest.raises(ResultFormatError, match="'data' must be a JSON object"):
        load_result(old)
