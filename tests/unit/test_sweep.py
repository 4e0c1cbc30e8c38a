"""Sweeps on a tiny model: the grid, the store, resuming, the analysis, and Ray (2 local workers)."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest
import torch

from knowscope.editing import EditSession
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.hparams import ROMEHyperParams
from knowscope.editing.rome import edit as rome_edit
from knowscope.editing.stats import key_stats
from knowscope.facts import Fact
from knowscope.sweep import (
    Cell,
    SettingsMismatchError,
    StoreBusyError,
    SweepResult,
    SweepSpec,
    SweepStore,
    edited_layers,
    import_ray,
    parse_layers,
    recommend_layer,
    run_sweep,
    spearman,
    spread,
)
from knowscope.sweep.analysis import harmonic_mean

FACTS = [
    Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy", case_id=1,
         relation_id="P36", paraphrase_prompts=["A city. Paris is the capital of"],
         neighborhood_prompts=["Lyon is a city in", "Rome is the capital of"]),
    Fact(subject="Tokyo", prompt="{} is located in", target_true="Japan", target_new="Spain", case_id=2,
         relation_id="P17", neighborhood_prompts=["Osaka is located in"]),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="golf", case_id=3,
         relation_id="P641", neighborhood_prompts=["Pele plays the sport of"]),
]
HP = {"rome": {"v_steps": 3, "context_lengths": [[4, 2]], "stats_tokens": 400},
      "memit": {"v_steps": 3, "context_lengths": [[4, 2]], "stats_tokens": 400, "mom2_weight": 50.0}}
TRACE = {"samples": 2}


def spec(**kw) -> SweepSpec:
    args = dict(model="tiny-llama", facts=FACTS[:2], methods=["rome"], layers="0-3", trace=TRACE)
    args.update(kw)
    args.setdefault("hparams", {m: HP[m] for m in args["methods"] if m in HP})
    return SweepSpec(**args)


def rows(path) -> dict[str, dict]:
    return {c["cell_id"]: c for c in SweepResult.load(path).cells}


def assert_same_rows(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for cid in a:
        ma, mb = a[cid]["metrics"], b[cid]["metrics"]
        assert sorted(ma) == sorted(mb), cid
        for k in ma:
            if ma[k] is None or mb[k] is None:
                assert ma[k] == mb[k], (cid, k)
            else:
                assert ma[k] == pytest.approx(mb[k], abs=tol), (cid, k)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, tiny_llama):
    """The reference sweep: rome + memit (window 3) over the 4 layers, 2 facts, in this process."""
    path = tmp_path_factory.mktemp("sweep") / "local.sqlite"
    s = spec(methods=["rome", "memit"], window=3)
    report = run_sweep(s, path, use_ray=False, model=tiny_llama, progress=False)
    assert report.n_run == report.n_cells == 2 * 4 * 2 and report.n_errors == 0
    return path


# ------------------------------------------------------------------------------------------ grid


def test_layer_specs_windows_and_spread():
    assert parse_layers("all", 4) == [0, 1, 2, 3] and parse_layers(None, 2) == [0, 1]
    assert parse_layers("1-3", 30) == [1, 2, 3] and parse_layers("0,5,9", 30) == [0, 5, 9]
    assert parse_layers("0-29:10", 30) == [0, 10, 20] and parse_layers([3, 1, 3], 5) == [1, 3]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("28-31", 30)
    # Hase et al. / ROME tracing windows: centred, clipped at the ends (not shifted)
    assert edited_layers("memit", 5, 5, 30) == [3, 4, 5, 6, 7]
    assert edited_layers("memit", 0, 5, 30) == [0, 1, 2]
    assert edited_layers("memit", 29, 5, 30) == [27, 28, 29]
    assert edited_layers("memit", 4, 4, 30) == [2, 3, 4, 5]
    assert edited_layers("rome", 7, 5, 30) == [7] and edited_layers("ft", 0, 5, 30) == [0]
    facts = [Fact(subject=f"s{i}", prompt="{} x", target_true="a", target_new="b", relation_id=r)
             for i, r in enumerate("AAAABBC")]
    assert [f.relation_id for f in spread(facts, 4)] == ["A", "B", "C", "A"]
    assert spread(facts, None) == facts and spread(facts, 100) == facts


def test_cells_and_spec_validation():
    s = spec(methods=["rome", "memit"], seeds=[0, 1])
    cells = s.cells(4)
    assert len(cells) == 2 * 2 * 2 * 4 and len({c.id for c in cells}) == len(cells)
    assert Cell("rome", 3, 1, 0).id == "rome/L3/s0/f1"
    # fact-major within a method: a partial sweep leaves whole facts, every layer of each
    assert [c.layer for c in cells[:4]] == [0, 1, 2, 3] and {c.fact for c in cells[:4]} == {0}
    for bad, match in [(dict(methods=["kn"]), "unknown method"), (dict(facts=[]), "at least one fact"),
                       (dict(seeds=[1, 1]), "distinct"), (dict(window=0), "window"),
                       (dict(hparams={"ft": {}}), "does not run"), (dict(trace={"noise_std": 1}), "trace settings")]:
        with pytest.raises(ValueError, match=match):
            spec(**bad)


def test_spearman_matches_its_definition():
    # no ties: 1 - 6 Σd² / (n (n² - 1))
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    d2 = sum((a - b) ** 2 for a, b in zip([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], strict=True))
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (5 * 24))
    # ties share their mean rank: ranks x = [1.5, 1.5, 3, 4], y = [1, 2, 3, 4]
    rx, ry = torch.tensor([1.5, 1.5, 3, 4]), torch.tensor([1.0, 2, 3, 4])
    ref = float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
    assert spearman([0.1, 0.1, 0.5, 0.9], [10, 20, 30, 40]) == pytest.approx(ref)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
    assert spearman([1, None, 3, 4], [1, 5, 2, 4]) == pytest.approx(spearman([1, 3, 4], [1, 2, 4]))
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3) and harmonic_mean([1.0, 0.0]) == 0.0
    assert harmonic_mean([1.0, None]) is None


# ------------------------------------------------------------------------------------------ cells and store


def test_a_cell_is_an_edit_evaluated_and_undone(local_store, tiny_llama):
    """The stored ROME row equals the edit done by hand: rome.edit at the layer, evaluate(), rewrite score."""
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters().items()}
    row = rows(local_store)["rome/L2/s0/f0"]
    fact = FACTS[0]
    hp = ROMEHyperParams.for_model(tiny_llama, v_steps=3, context_lengths=((4, 2),), stats_tokens=400, seed=0)
    stats = key_stats(tiny_llama, [2], n_tokens=400, progress=False)
    reference = pre_edit_predictions(tiny_llama, [fact])
    p_before = evaluate(tiny_llama, [fact], fluency=False).per_fact[0]["p_new"]
    torch.manual_seed(0)
    result = rome_edit(tiny_llama, [fact], layers=2, hparams=hp, stats=stats)
    session = EditSession(tiny_llama)
    with session.temporary(result):
        m = evaluate(tiny_llama, [fact], reference=reference, fluency=False).per_fact[0]
    got = row["metrics"]
    for k in ("efficacy_score", "paraphrase_score", "neighborhood_score", "locality_acc", "p_new", "p_true"):
        assert got[k] == pytest.approx(m[k], abs=1e-6), k
    assert got["p_new_pre"] == pytest.approx(p_before, abs=1e-7)
    assert got["rewrite_score"] == pytest.approx((m["p_new"] - p_before) / (1 - p_before), abs=1e-6)
    assert row["layers"] == [2] and row["fingerprint"] == tiny_llama.fingerprint and row["worker"] == "local"
    memit_row = rows(local_store)["memit/L0/s0/f1"]
    assert memit_row["layers"] == [0, 1]  # window 3 centred on 0, clipped
    assert all(torch.equal(before[n], p) for n, p in tiny_llama.named_parameters().items())  # all undone


def test_traces_are_stored_per_fact_kind_and_layer(local_store, tiny_llama):
    res = SweepResult.load(local_store)
    assert sorted(res.traces) == [0, 1]
    for fact in res.traces.values():
        assert sorted(fact) == ["attn", "hidden", "mlp"] and all(len(v) == 4 for v in fact.values())
    # the stored effect is the trace's indirect effect at the last subject token
    from knowscope.circuits import trace

    f = FACTS[1]
    tr = trace(tiny_llama, f.text, f.subject, target=f.true_continuation, samples=2, tokens="last_subject")
    pos = tr.subject_range[1] - 1
    for kind in ("hidden", "mlp", "attn"):
        want = tr.indirect_effect(kind)[pos].tolist()
        assert [res.traces[1][kind][L] for L in range(4)] == pytest.approx(want, abs=1e-6)


def test_resume_runs_only_missing_cells(tmp_path, tiny_llama, local_store):
    path = tmp_path / "s.sqlite"
    s = spec(methods=["rome", "memit"], window=3)
    stop_after = 5

    def interrupt(row, pool, seen=[]):  # noqa: B006 - a counter across calls
        seen.append(row)
        if len(seen) == stop_after:
            raise KeyboardInterrupt

    timed = run_sweep(s, path, use_ray=False, model=tiny_llama, progress=False, max_seconds=0)
    assert timed.out_of_time and timed.n_traces_run == 1 and timed.n_run == 0  # out of time after one job
    with pytest.raises(KeyboardInterrupt):
        run_sweep(s, path, use_ray=False, model=tiny_llama, progress=False, on_result=interrupt)
    with SweepStore(path) as db:  # consistent: whole rows only (the 2 traces and 4 cells stored)
        assert len(db.traced_facts()) + len(db.done_cells()) == stop_after + 1
    again = run_sweep(s, path, use_ray=False, model=tiny_llama, progress=False)
    assert again.n_skipped == stop_after - 1 and again.n_run == again.n_cells - again.n_skipped
    assert again.n_traces_run == 0
    assert_same_rows(rows(path), rows(local_store))
    # a finished sweep runs nothing; a deleted row is the only one recomputed
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM cells WHERE cell_id = 'memit/L3/s0/f1'")
    third = run_sweep(s, path, use_ray=False, model=tiny_llama, progress=False)
    assert (third.n_run, third.n_skipped) == (1, third.n_cells - 1)
    assert_same_rows(rows(path), rows(local_store))


def test_other_settings_busy_stores_and_bad_files_are_refused(tmp_path, tiny_llama, local_store):
    with pytest.raises(SettingsMismatchError, match="layers differ"):
        run_sweep(spec(methods=["rome", "memit"], window=3, layers="0-2"), local_store, use_ray=False,
                  model=tiny_llama, progress=False)
    with pytest.raises(SettingsMismatchError, match="hparams"):
        run_sweep(spec(methods=["rome", "memit"], window=3, hparams={**HP, "rome": {**HP["rome"], "v_steps": 4}}),
                  local_store, use_ray=False, model=tiny_llama, progress=False)
    with SweepStore(tmp_path / "busy.sqlite", writer=True):
        with pytest.raises(StoreBusyError, match="another sweep"):
            SweepStore(tmp_path / "busy.sqlite", writer=True)
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(ValueError, match="not a knowscope sweep store"):
        SweepResult.load(tmp_path / "junk.sqlite")
    with pytest.raises(FileNotFoundError):
        SweepResult.load(tmp_path / "missing.sqlite")
    with pytest.raises(ValueError, match="one worker"):
        run_sweep(spec(), tmp_path / "x.sqlite", use_ray=False, workers=2)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"knowscope\[ray\]"):
        import_ray()


# ------------------------------------------------------------------------------------------ analysis


def synthetic_store(path, effect, success):
    """A store written by hand: ``effect[f][L]`` (mlp) and ``success[f][L]`` (every success metric)."""
    n_facts, n_layers = len(effect), len(effect[0])
    s = SweepSpec("tiny-llama", [Fact(subject=f"s{i}", prompt="{} x", target_true="a", target_new="b")
                                 for i in range(n_facts)], methods=["rome"], layers="all")
    with SweepStore(path, writer=True) as db:
        db.claim(s.settings("fp", n_layers, {"rome": {}}), s.facts)
        for f in range(n_facts):
            eff = {k: list(effect[f]) for k in ("hidden", "mlp", "attn")}
            db.add_trace(f, {"effects": eff, "high": 1.0, "low": 0.0, "position": 1, "seconds": 0.0})
            for L in range(n_layers):
                v = success[f][L]
                metrics = {"efficacy_score": v, "paraphrase_score": v, "neighborhood_score": 1.0, "rewrite_score": v}
                assert db.add_cell({"cell_id": Cell("rome", L, f).id, "fact": f, "fact_id": str(f), "method": "rome",
                                    "layer": L, "layers": [L], "seed": 0, "fingerprint": "fp", "hparams_hash": "h",
                                    "metrics": metrics, "seconds": 0.0})
        assert not db.add_cell({"cell_id": Cell("rome", 0, 0).id, "fact": 0, "fact_id": "0", "method": "rome",
                                "layer": 0, "layers": [0], "seed": 0, "fingerprint": "fp", "hparams_hash": "h",
                                "metrics": {}, "seconds": 0.0})  # a second write of a cell is refused
    return path


def test_analysis_on_a_known_store(tmp_path):
    # tracing peaks at layer 1; editing works best at layer 3 and follows the effect nowhere
    effect = [[0.1, 0.9, 0.5, 0.2], [0.2, 0.8, 0.4, 0.1]]
    success = [[0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.9]]
    res = SweepResult.load(synthetic_store(tmp_path / "a.sqlite", effect, success))
    assert res.located_layer() == 1 and res.best_layer("rome") == 3
    by = {r["layer"]: r for r in res.by_layer("rome")}
    assert by[3]["rewrite_score"] == pytest.approx(0.85) and by[1]["effect_mlp"] == pytest.approx(0.85)
    assert by[3]["score"] == pytest.approx(harmonic_mean([0.85, 0.85, 1.0]))
    lost = res.quality_lost("rome")
    assert lost["rewrite_score"] == pytest.approx(0.85 - 0.35)
    c = res.correlation("rome", "rewrite_score")
    pooled_ref = spearman([x for row in effect for x in row], [x for row in success for x in row])
    assert c["pooled"] == pytest.approx(pooled_ref) and c["n_points"] == 8
    assert c["per_fact_mean"] == pytest.approx((spearman(effect[0], success[0]) + spearman(effect[1], success[1])) / 2)
    rec = recommend_layer(tmp_path / "a.sqlite", "rome", "rewrite_score")
    assert (rec.layer, rec.located_layer) == (3, 1) and rec.value == pytest.approx(0.85)
    assert "layer 3" in str(rec) and len(rec.by_layer) == 4
    with pytest.raises(ValueError, match="no memit cells"):
        recommend_layer(tmp_path / "a.sqlite", "memit")
    # success that follows the effect exactly: rho = 1 everywhere, located = best, nothing lost
    res2 = SweepResult.load(synthetic_store(tmp_path / "b.sqlite", effect, effect))
    assert res2.correlation("rome", "rewrite_score")["pooled"] == pytest.approx(1.0)
    assert res2.best_layer("rome") == res2.located_layer() == 1
    assert res2.quality_lost("rome")["rewrite_score"] == pytest.approx(0.0)
    summary = res.summary()
    assert summary["located_layer"] == 1 and summary["best_layer"] == 3 and "rewrite_score" in summary["correlation"]
    out = res.save(tmp_path / "summary.json")
    assert json.loads(out.read_text())["methods"]["rome"]["best_layer"] == 3
    assert res.figure() is not None and res.correlation_figure() is not None and res.fact_rows(0)


# ------------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_rows_as_in_process(ray_cluster, tmp_path, local_store):
    path = tmp_path / "ray.sqlite"
    report = run_sweep(spec(methods=["rome", "memit"], window=3), path, workers=2, progress=False)
    assert report.ray and report.n_run == report.n_cells == 16 and report.n_restarts == 0
    got = rows(path)
    assert {c["worker"] for c in got.values()} == {"ray-0", "ray-1"}  # both workers did cells
    assert_same_rows(got, rows(local_store))
    a, b = SweepResult.load(path).traces, SweepResult.load(local_store).traces
    flat = [(f, k, L) for f in a for k in a[f] for L in a[f][k]]
    assert sorted(a) == sorted(b) and [a[f][k][L] for f, k, L in flat] == pytest.approx(
        [b[f][k][L] for f, k, L in flat], abs=1e-7)


def test_a_killed_worker_loses_no_cell_and_duplicates_none(ray_cluster, tmp_path, local_store):
    path = tmp_path / "killed.sqlite"
    killed = []

    def kill_second_worker(row, pool):
        if not killed and row.get("cell_id"):  # mid-sweep: the other worker is busy with its own cell
            killed.append(pool.actors[1])
            ray_cluster.kill(pool.actors[1], no_restart=True)

    report = run_sweep(spec(methods=["rome", "memit"], window=3), path, workers=2, progress=False,
                       on_result=kill_second_worker)
    assert killed and report.n_restarts == 1 and report.n_errors == 0
    assert report.n_run == report.n_cells == 16
    assert "ray-2" in report.worker_names  # the replacement
    with sqlite3.connect(path) as conn:
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT cell_id) FROM cells").fetchone()
    assert n == distinct == 16
    assert_same_rows(rows(path), rows(local_store))


# ------------------------------------------------------------------------------------------ command line


def test_the_command_line(tmp_path, capsys, monkeypatch):
    from knowscope.cli import main
    from knowscope.facts import save_facts

    data = save_facts(FACTS[:2], tmp_path / "facts.json")
    store, out = tmp_path / "cli.sqlite", tmp_path / "out.json"
    args = ["sweep", "--model", "tiny-llama", "--method", "rome", "--layers", "1-2", "--data", str(data),
            "--hparams", json.dumps({"rome": HP["rome"]}), "--samples", "2", "--no-ray", "--workers", "1",
            "--store", str(store), "--json", str(out)]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert (first["n_cells"], first["n_run"], first["n_skipped"]) == (4, 4, 0)
    res = SweepResult.load(store)
    assert first["located_layer"] == res.located_layer() and first["best_layer"] == res.best_layer("rome")
    assert set(first["correlation"]) >= {"score", "rewrite_score", "efficacy_score", "neighborhood_score"}
    assert first["correlation"]["rewrite_score"] == res.correlation("rome", "rewrite_score")["pooled"]
    assert main(args) == 0  # resumed: nothing left to run
    again = json.loads(out.read_text())
    assert (again["n_run"], again["n_skipped"]) == (0, 4)
    assert "best layer" in capsys.readouterr().out
    # bad input: one line, exit 2
    for extra, message in [(["--layers", "0-9"], "out of range"), (["--hparams", "{"], "not valid JSON"),
                           (["--limit", "0"], "--limit"), (["--seeds", "a"], "--seeds")]:
        bad = [a for a in args if a not in ("--store", str(store))] + ["--store", str(tmp_path / "b.sqlite")]
        for i, a in enumerate(bad):
            if extra[0] == a:
                bad = bad[:i] + bad[i + 2:]
                break
        assert main(bad + extra) == 2
        assert message in capsys.readouterr().err
    assert main(args[:-4] + ["--workers", "2", "--store", str(store)]) == 2
    assert "--workers 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    no_ray = [a for a in args if a != "--no-ray"]
    assert main(no_ray) == 2
    assert "knowscope[ray]" in capsys.readouterr().err


def test_a_worker_that_cannot_load_the_model_is_one_clear_error(ray_cluster, tmp_path):
    with pytest.raises(RuntimeError, match="could not start"):
        run_sweep(spec(model=str(tmp_path / "no-such-model")), tmp_path / "x.sqlite", workers=1, progress=False)
    assert ray_cluster.is_initialized()  # the test's own cluster is left running
