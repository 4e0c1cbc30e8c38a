"""Resumable sequential editing and the collapse monitor, on a tiny model."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing.evaluation import evaluate
from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.sequential import (
    CollapseMonitor,
    MonitorThresholds,
    SequentialRun,
    efficacy,
    load_run_edits,
    run_sequential,
)
from knowscope.editing.stats import key_stats
from knowscope.facts import Fact
from knowscope.results import load_result

EDITS = [
    Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy", case_id=1),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball",
         case_id=2),
    Fact(subject="Tokyo", prompt="{} is located in", target_true="Japan", target_new="Spain", case_id=3),
    Fact(subject="Michael Jordan", prompt="{} plays the sport of", target_true="basketball", target_new="golf",
         case_id=4),
]
PROBE = [
    Fact(subject="Rome", prompt="{} is the capital of", target_true="Italy", target_new="France", case_id=10,
         neighborhood_prompts=["Milan is a city in", "Paris is the capital of"]),
    Fact(subject="Berlin", prompt="{} is the capital of", target_true="Germany", target_new="Japan", case_id=11,
         neighborhood_prompts=["Munich is a city in"]),
]
HP = MEMITHyperParams(layers=(1, 2), v_steps=3, context_lengths=((4, 2),), mom2_weight=50.0, stats_tokens=400,
                      null_space_threshold=0.05, null_space_l2=1.0)


@pytest.fixture(scope="module")
def stats(tiny_llama):
    return key_stats(tiny_llama, list(HP.layers), n_tokens=HP.stats_tokens, seq_len=32, batch_size=8, progress=False)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters().items()}


def monitor(**kw):
    return CollapseMonitor(probe=PROBE, fluency_prompts=1, **kw)


def test_a_resumed_run_equals_an_uninterrupted_one(tiny_llama, stats, tmp_path):
    before = snapshot(tiny_llama)
    whole = run_sequential(tiny_llama, EDITS, 2, tmp_path / "whole", hparams=HP, stats=stats, monitor=monitor())
    assert [r["edits"] for r in whole.records] == [0, 2, 4]
    # stopped before its first batch (only the unedited record saved), then after one batch
    none = run_sequential(tiny_llama, EDITS, 2, tmp_path / "part", hparams=HP, stats=stats, monitor=monitor(),
                          max_batches=0)
    assert [r["edits"] for r in none.records] == [0]
    part = run_sequential(tiny_llama, EDITS, 2, tmp_path / "part", hparams=HP, stats=stats, monitor=monitor(),
                          max_batches=1)
    assert [r["edits"] for r in part.records] == [0, 2]
    assert all(torch.equal(before[n], p) for n, p in snapshot(tiny_llama).items())  # left unedited
    rest = run_sequential(tiny_llama, EDITS, 2, tmp_path / "part", hparams=HP, stats=stats, monitor=monitor())
    assert [r["edits"] for r in rest.records] == [0, 2, 4]
    for a, b in zip(whole.records, rest.records, strict=True):
        for key in ("efficacy_all", "retention_first", "neighborhood", "locality", "probe_accuracy", "fluency"):
            assert a["signals"][key] == pytest.approx(b["signals"][key], abs=1e-6), key
    for x, y in zip(load_run_edits(tmp_path / "whole"), load_run_edits(tmp_path / "part"), strict=True):
        for name in x.deltas:
            torch.testing.assert_close(x.deltas[name], y.deltas[name], rtol=1e-5, atol=1e-7)
    # a finished run called again does nothing more
    again = run_sequential(tiny_llama, EDITS, 2, tmp_path / "part", hparams=HP, stats=stats, monitor=monitor())
    assert len(again.records) == 3
    loaded = load_result(tmp_path / "part" / "state")
    assert isinstance(loaded, SequentialRun) and loaded.records == again.records
    assert loaded.figure() is not None


def test_a_finished_run_continues_with_more_facts(tiny_llama, stats, tmp_path):
    """A longer fact list whose first facts are the saved run's continues it; the result equals one run over
    the longer list. Another order, or a saved run ending in a partial batch, is refused."""
    whole = run_sequential(tiny_llama, EDITS, 2, tmp_path / "whole", hparams=HP, stats=stats, monitor=monitor())
    first = run_sequential(tiny_llama, EDITS[:2], 2, tmp_path / "more", hparams=HP, stats=stats, monitor=monitor())
    assert [r["edits"] for r in first.records] == [0, 2]
    more = run_sequential(tiny_llama, EDITS, 2, tmp_path / "more", hparams=HP, stats=stats, monitor=monitor())
    assert [r["edits"] for r in more.records] == [0, 2, 4]
    for a, b in zip(whole.records, more.records, strict=True):
        assert a["signals"]["efficacy_all"] == pytest.approx(b["signals"]["efficacy_all"], abs=1e-6)
    for x, y in zip(load_run_edits(tmp_path / "whole"), load_run_edits(tmp_path / "more"), strict=True):
        for name in x.deltas:
            torch.testing.assert_close(x.deltas[name], y.deltas[name], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="other settings"):  # the saved facts are not the first ones
        run_sequential(tiny_llama, [EDITS[1], EDITS[0], *EDITS[2:]] + [EDITS[0]], 2, tmp_path / "more",
                       hparams=HP, stats=stats, monitor=monitor())
    run_sequential(tiny_llama, EDITS[:3], 2, tmp_path / "odd", hparams=HP, stats=stats, monitor=monitor())
    with pytest.raises(ValueError, match="other settings"):  # 3 facts in batches of 2: the last batch was partial
        run_sequential(tiny_llama, EDITS, 2, tmp_path / "odd", hparams=HP, stats=stats, monitor=monitor())


def test_other_settings_and_bad_input_are_refused(tiny_llama, stats, tmp_path):
    run_sequential(tiny_llama, EDITS[:2], 2, tmp_path / "run", hparams=HP, stats=stats, null_space=False)
    with pytest.raises(ValueError, match="other settings"):
        run_sequential(tiny_llama, EDITS[:2], 1, tmp_path / "run", hparams=HP, stats=stats, null_space=False)
    with pytest.raises(ValueError, match="other settings"):
        run_sequential(tiny_llama, EDITS[:2], 2, tmp_path / "run", hparams=HP, stats=stats, null_space=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_sequential(tiny_llama, EDITS[:2], 2, tmp_path / "busy", hparams=HP, stats=stats)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="never be edited"):
        run_sequential(tiny_llama, EDITS + PROBE[:1], 2, tmp_path / "x", hparams=HP, stats=stats, monitor=monitor())
    with pytest.raises(ValueError, match="probe"):
        CollapseMonitor(probe=[])
    with pytest.raises(ValueError, match="out of range"):
        MonitorThresholds(locality=1.5)


def test_monitor_signals_are_the_quantities_they_name(tiny_llama, stats, tmp_path):
    before = snapshot(tiny_llama)
    run = run_sequential(tiny_llama, EDITS, 2, tmp_path / "run", hparams=HP, stats=stats, monitor=monitor())
    base = run.records[0]["signals"]
    assert base["locality"] == 1.0  # the unedited model is its own reference
    assert base["neighborhood_unedited"] == base["neighborhood"]
    # the unedited model's score on the prompts the last record kept ("Paris is the capital of" names an
    # edited subject under its relation and is left out): the run leaves the model unedited
    same = evaluate(tiny_llama, PROBE, fluency=False, generation=False, edited=EDITS).neighborhood_score
    assert run.records[-1]["signals"]["neighborhood_unedited"] == pytest.approx(same, abs=1e-6)
    kept = evaluate(tiny_llama, PROBE, fluency=False, generation=False, edited=EDITS).per_fact
    assert kept != evaluate(tiny_llama, PROBE, fluency=False, generation=False).per_fact  # a prompt left out
    assert base["efficacy_all"] is None and base["update_norm"] == {}
    assert base["probe_accuracy"] is not None and base["fluency"] > 0
    # update_norm = ‖W − W₀‖ / ‖W₀‖ with W the sum of the saved batch deltas
    edits = load_run_edits(tmp_path / "run")
    last = run.records[-1]["signals"]["update_norm"]
    for name, value in last.items():
        total = sum(e.deltas[name] for e in edits)
        assert value == pytest.approx(float(total.norm() / before[name].norm()), rel=1e-4)
    # efficacy as its definition: apply the edits, compare P(new) and P(true) on each rewrite prompt
    from knowscope.editing.scoring import score_continuations
    from knowscope.editing.session import EditSession

    session = EditSession(tiny_llama)
    for e in edits:
        session.apply(e)
    try:
        pairs = [(f.text, c) for f in EDITS for c in (f.new_continuation, f.true_continuation)]
        s = score_continuations(tiny_llama, pairs)
        expected = sum(s[2 * i].prob > s[2 * i + 1].prob for i in range(len(EDITS))) / len(EDITS)
        assert run.records[-1]["signals"]["efficacy_all"] == pytest.approx(expected)
        assert efficacy(tiny_llama, EDITS[:2]) == pytest.approx(run.records[-1]["signals"]["retention_first"])
    finally:
        session.rollback()


def test_a_warning_can_stop_the_run(tiny_llama, stats, tmp_path):
    strict = monitor(thresholds=MonitorThresholds(update_norm=0.0), stop_on_warning=True)
    run = run_sequential(tiny_llama, EDITS, 2, tmp_path / "run", hparams=HP, stats=stats, monitor=strict)
    assert [r["edits"] for r in run.records] == [0, 2] and run.stopped
    assert any("update of" in w for w in run.records[-1]["warnings"])
    again = run_sequential(tiny_llama, EDITS, 2, tmp_path / "run", hparams=HP, stats=stats, monitor=strict)
    assert len(again.records) == 2  # a stopped run stays stopped
