"""Unlearning on a tiny model: the editors' deltas, undo bit for bit, save / load, MemFlex's locate step on a
constructed case, the KnowUnDo reader, the metrics' text checks and one-line refusals of bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_run import run_cli as _cli

from knowscope.editing.session import EditResult, EditSession
from knowscope.editing.unlearning import (
    UNLEARNERS,
    NPOHyperParams,
    UnlearnFormatError,
    UnlearnItem,
    UnlearnMetrics,
    UnlearnSet,
    evaluate_unlearning,
    get_unlearner,
    load_bundled_unlearn,
    load_unlearn_set,
    parameter_groups,
    unlearn_reference,
)
from knowscope.editing.unlearning.memflex import group_gradients, locate_groups
from knowscope.editing.unlearning.methods import ReLearnHyperParams, augment, npo_loss
from knowscope.editing.unlearning.metrics import contains
from knowscope.editing.unlearning.projection import projector, retain_inputs
from knowscope.editing.unlearning.train import answer_logprobs, encode, mean_nll, sequence_logprob

FORGET = [UnlearnItem("The capital of France is", "Paris", "France", "capital", paraphrases=("France's capital is",)),
          UnlearnItem("The Eiffel Tower is in the city of", "Paris", "Eiffel Tower", "city")]
RETAIN = [UnlearnItem("The capital of Italy is", "Rome", "Italy", "capital", "neighborhood"),
          UnlearnItem("The currency of France is the", "euro", "France", "currency", "relation_specificity")]
FAST = dict(max_steps=2, stop_forget=None, lr=1e-3, retain_batch=2)


def _hp(name: str, **extra):
    hp = dict(FAST, **extra)
    if name == "memflex":
        hp.update(sim_threshold=1.0, grad_quantile=0.0, max_groups=3)
    if name in ("relearn", "memflex"):
        hp.update(aug_batch=4)
    return get_unlearner(name).hparams(**hp)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters().items()}


@pytest.mark.parametrize("name", [n for n in UNLEARNERS if n != "keyed"])  # keyed: test_unlearn_keyed
def test_editor_deltas_undo_and_save(tiny_llama, tmp_path, name):
    model = tiny_llama
    snap = _snapshot(model)
    result = get_unlearner(name).edit(model, FORGET, RETAIN, hparams=_hp(name))
    params = model.named_parameters()
    assert all(torch.equal(v, snap[k]) for k, v in params.items())  # the editor leaves the weights as they were
    assert result.deltas and all(result.deltas[k].shape == params[k].shape for k in result.deltas)
    assert any(float(d.abs().max()) > 0 for d in result.deltas.values())
    assert result.extra["steps"] == 2 and len(result.requests) == 2 and len(result.extra["retain"]) == 2
    if name == "memflex":
        assert set(result.deltas) == set(result.extra["located"]) and len(result.deltas) <= 3
    else:
        assert set(result.deltas) == set(parameter_groups(model, ("mlp",)))
    session = EditSession(model)
    session.apply(result)
    assert any(not torch.equal(params[k], snap[k]) for k in result.deltas)
    session.undo()
    assert all(torch.equal(v, snap[k]) for k, v in params.items())  # bit for bit
    result.save(tmp_path / "edit")
    loaded = EditResult.load(tmp_path / "edit")
    assert loaded.method == name and set(loaded.deltas) == set(result.deltas)
    assert all(torch.equal(loaded.deltas[k], result.deltas[k]) for k in result.deltas)
    session.apply(loaded)
    session.save(tmp_path / "session")
    session.rollback()
    again = EditSession.load(model, tmp_path / "session")
    assert all(torch.equal(params[k], snap[k] + result.deltas[k]) for k in result.deltas)
    again.rollback()
    assert all(torch.equal(v, snap[k]) for k, v in params.items())


def test_stop_rule_stops_when_forgotten(tiny_llama):
    # nothing the tiny random model generates begins with these answers: forgotten before any step
    result = get_unlearner("ga").edit(tiny_llama, FORGET, RETAIN, hparams=_hp("ga", stop_forget=1.0, max_steps=5))
    assert result.extra["steps"] == 0 and result.extra["forgotten_train"] == 1.0
    assert all(float(d.abs().max()) == 0 for d in result.deltas.values())


def test_stop_rule_waits_for_the_retain_set(tiny_llama):
    # forgotten from the start, but the random model gives none of the retain answers (and is not trained on
    # them here): with stop_retain the loop keeps training until max_steps; without it, it never starts
    hp = _hp("npo", stop_forget=1.0, stop_retain=1.0, max_steps=3, retain_weight=0.0)
    result = get_unlearner("npo").edit(tiny_llama, FORGET, RETAIN, hparams=hp)
    assert result.extra["steps"] == 3 and result.extra["retain_kept_train"] < 1.0
    assert all("retain_kept" in h for h in result.extra["history"])
    with pytest.raises(ValueError, match="stop_retain must be"):
        get_unlearner("npo").hparams(stop_forget=None, stop_retain=0.9)


def test_npo_loss_starts_at_2_log2_over_beta(tiny_llama):
    hp = NPOHyperParams(beta=0.5, retain_weight=0.0)
    loss, _ = npo_loss(tiny_llama, encode(tiny_llama, FORGET), hp)(tiny_llama, 0, [])
    assert math.isclose(float(loss), 2 / 0.5 * math.log(2), rel_tol=1e-5)


def test_relearn_augmentation_never_uses_the_answer(tiny_llama):
    aug = augment(tiny_llama, FORGET, ReLearnHyperParams(n_alternatives=2))
    assert aug and all(a.kind == "augmented" for a in aug)
    assert all(normal not in a.answer.lower() for a in aug for normal in ("paris",))
    assert {a.prompt for a in aug} >= {f.prompt for f in FORGET}


def test_locate_groups_picks_forget_dominant_groups():
    torch.manual_seed(0)
    base = torch.randn(8, 8)
    other = torch.randn(8, 8)
    forget = {"dominant": base * 5, "shared": base * 5, "weak": base * 0.01, "both_large": other * 5}
    retain = {"dominant": other * 0.1,   # orthogonal-ish and small: the knowledge to forget lives here
              "shared": base * 5,         # same direction as the forget gradient: shared knowledge, keep
              "weak": other * 0.1,        # forget gradient too small
              "both_large": base * 5}     # different direction, but the retain gradient is as large
    loc = locate_groups(forget, retain, sim_threshold=0.5, grad_quantile=0.25, max_groups=1)
    assert loc.chosen == ["dominant"]
    loc2 = locate_groups(forget, retain, sim_threshold=0.5, grad_quantile=0.25, max_groups=4)
    assert set(loc2.chosen) == {"dominant", "both_large"}  # "shared" fails the cosine test, "weak" the saliency
    rows = {r["name"]: r for r in loc2.rows()}
    assert rows["shared"]["cosine"] > 0.99 and not rows["shared"]["chosen"]


def test_group_gradients_match_a_plain_loop(tiny_llama):
    names = parameter_groups(tiny_llama, ("mlp",), [1])
    pairs = encode(tiny_llama, FORGET + RETAIN)
    got = group_gradients(tiny_llama, names, pairs, batch=3)
    params = tiny_llama.named_parameters()
    for n in names:
        params[n].requires_grad_(True)
    try:
        grads = []
        for p in pairs:
            g = torch.autograd.grad(mean_nll(tiny_llama, [p]), [params[n] for n in names])
            grads.append(g)
        for i, n in enumerate(names):
            ref = torch.stack([g[i] for g in grads]).mean(0)
            torch.testing.assert_close(got[n], ref, rtol=1e-4, atol=1e-6)
    finally:
        for n in names:
            params[n].requires_grad_(False)
            params[n].grad = None


def test_bad_input_is_one_clear_line(tiny_llama):
    with pytest.raises(UnlearnFormatError, match="forget set is empty"):
        UnlearnSet([], RETAIN)
    with pytest.raises(UnlearnFormatError, match="overlaps the forget set"):
        UnlearnSet(FORGET, [UnlearnItem("the capital of  France is", "Paris")])
    with pytest.raises(UnlearnFormatError, match="overlaps"):
        get_unlearner("ga").edit(tiny_llama, FORGET, [RETAIN[0], UnlearnItem("France's capital is", "Paris")])
    with pytest.raises(UnlearnFormatError, match="empty"):
        get_unlearner("memflex").edit(tiny_llama, [], RETAIN)
    with pytest.raises(ValueError, match="needs a retain set"):
        get_unlearner("memflex").edit(tiny_llama, FORGET, [], hparams=_hp("memflex"))
    with pytest.raises(ValueError, match="lr must be"):
        get_unlearner("ga").hparams(lr=0)
    with pytest.raises(ValueError, match="unknown unlearning method"):
        get_unlearner("rome")


def test_knowundo_reader(tmp_path):
    unlearn = [{"train": [{"text": "Q1", "labels": ["A1", "A1b"]}], "val": [{"text": "Q2", "labels": "A2"}]}]
    retention = [{"train": [{"text": "Q3", "labels": "A3"}], "val": []}]
    (tmp_path / "u.json").write_text(json.dumps(unlearn))
    (tmp_path / "r.json").write_text(json.dumps(retention))
    s = load_unlearn_set(tmp_path / "u.json", "all", tmp_path / "r.json")
    assert [(i.prompt, i.answer) for i in s.forget] == [("Q1", "A1"), ("Q2", "A2")]
    assert [i.prompt for i in s.retain] == ["Q3"]
    assert [i.prompt for i in load_unlearn_set(tmp_path / "u.json", "val").forget] == ["Q2"]
    both = UnlearnSet(s.forget, s.retain)
    both.save(tmp_path / "both.json")
    again = load_unlearn_set(tmp_path / "both.json", "train")
    assert [(i.prompt, i.answer) for i in again.forget] == [("Q1", "A1"), ("Q2", "A2")]
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "Q"}]))
    with pytest.raises(UnlearnFormatError, match="bad.json: unlearn\\[0\\]: field 'labels'"):
        load_unlearn_set(tmp_path / "bad.json")


def test_bundled_set_halves_are_disjoint():
    train, val = load_bundled_unlearn("train"), load_bundled_unlearn("val")
    assert len(train.forget) >= 10 and len(val.forget) >= 10 and len(train.retain) >= len(train.forget)
    assert not {i.subject for i in train.forget} & {i.subject for i in val.forget}
    kinds = {i.kind for i in train.retain}
    assert kinds == {"relation_specificity", "neighborhood"}


def test_contains_and_metrics_keys(tiny_llama):
    assert contains(" well, Spanish is spoken", "Spanish") and not contains(" Spanishness", "Spanish")
    assert contains(" The Euro.", "euro")
    uset = UnlearnSet(FORGET, RETAIN)
    ref = unlearn_reference(tiny_llama, uset, gen_len=10, fluency_prompts=2)
    m = evaluate_unlearning(tiny_llama, uset, ref)
    assert m["gen_forget"] == 1.0 and m["gen_retain"] == 0.0  # a random model knows nothing
    assert m["kfr"] == 1.0 and m["krr"] == 0.0 and math.isclose(m["fluency_ratio"], 1.0, rel_tol=1e-6)
    assert len([r for r in m.per_item if r["set"] == "paraphrase"]) == 1
    assert evaluate_unlearning(tiny_llama, uset, None, fluency=False)["kfr"] is None


def test_cli_unlearn(tmp_path, capsys):
    path = tmp_path / "set.json"
    UnlearnSet(FORGET, RETAIN).save(path)
    code, out, err = _cli(["unlearn", "--model", "tiny-llama", "--method", "memflex", "--data", str(path),
                           "--max-steps", "1", "--stop-forget", "1.0", "--stop-retain", "0.5",
                           "--retain-projection", "0.99", "--no-fluency", "--json",
                           str(tmp_path / "r.json"), "--save", str(tmp_path / "run")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["method"] == "memflex" and res["n_forget"] == 2 and "gen_forget" in res["metrics"]
    assert res["hparams"]["stop_retain"] == 0.5 and res["hparams"]["retain_projection"] == 0.99
    assert EditResult.load(tmp_path / "run" / "edit").method == "memflex"
    assert UnlearnMetrics.load(tmp_path / "run" / "metrics").values == res["metrics"]
    (tmp_path / "empty.json").write_text(json.dumps({"unlearn": [], "retention": []}))
    code, out, err = _cli(["unlearn", "--model", "tiny-llama", "--method", "ga", "--data",
                           str(tmp_path / "empty.json"), "--save", str(tmp_path / "no_run")], capsys)
    assert code == 2 and "forget set is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no_run").exists()  # nothing half-written
    overlap = {"unlearn": [{"text": "Q", "labels": "A"}], "retention": [{"text": "Q", "labels": "B"}]}
    (tmp_path / "overlap.json").write_text(json.dumps(overlap))
    code, out, err = _cli(["unlearn", "--model", "tiny-llama", "--method", "npo", "--data",
                           str(tmp_path / "overlap.json"), "--save", str(tmp_path / "no_run")], capsys)
    assert code == 2 and "overlaps the forget set" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no_run").exists()
    code, out, err = _cli(["unlearn", "--model", "tiny-llama", "--method", "npo", "--data", str(path),
                           "--stop-retain", "0.9", "--stop-forget", "0"], capsys)
    assert code == 2 and "stop_forget must be" in err and len(err.strip().splitlines()) == 1


def test_projector_removes_the_inputs_span_and_keeps_the_rest():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 12))[0]
    inputs = torch.randn(40, 3) @ basis[:, :3].T            # inputs in a 3-dimensional subspace
    p = projector(inputs, 1.0)
    assert float((inputs @ p).abs().max()) < 1e-4           # every input direction removed ...
    outside = basis[:, 5]
    torch.testing.assert_close(outside @ p, outside, atol=1e-5, rtol=0)  # ... and nothing else
    loose = projector(inputs, 0.5)                           # fewer directions removed at lower energy
    assert torch.linalg.matrix_rank(torch.eye(12) - loose) < 3


def test_retain_inputs_match_a_plain_capture(tiny_llama):
    names = parameter_groups(tiny_llama, ("mlp", "attn"), [1])
    pairs = encode(tiny_llama, RETAIN)
    got = retain_inputs(tiny_llama, names, pairs, batch=1)
    n_pos = sum(len(p) + len(a) - 1 for p, a in pairs)
    assert all(v.shape[0] == n_pos for v in got.values())
    batched = retain_inputs(tiny_llama, names, pairs, batch=4)   # right padding never leaks in
    for n in names:
        torch.testing.assert_close(batched[n], got[n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["ga", "memflex"])
def test_retain_projection_keeps_the_given_retain_answers(tiny_llama, name):
    model = tiny_llama
    r_pairs, f_pairs = encode(model, RETAIN), encode(model, FORGET)

    def logp(pairs):
        with torch.no_grad():
            return sequence_logprob(answer_logprobs(model, pairs), pairs)

    r0, f0 = logp(r_pairs), logp(f_pairs)
    changes = {}
    for proj in (None, 1.0):
        hp = _hp(name, lr=1e-2, max_steps=3, retain_weight=0.0, modules=("mlp", "attn"), retain_projection=proj)
        result = get_unlearner(name).edit(model, FORGET, RETAIN, hparams=hp)
        session = EditSession(model)
        session.apply(result)
        changes[proj] = (float((logp(r_pairs) - r0).abs().max()), float((logp(f_pairs) - f0).max()))
        session.undo()
    assert changes[None][0] > 1e-2                     # unconstrained, the retain answers move
    assert changes[1.0][0] < 1e-3                      # projected, they stay (to float error)
    assert changes[1.0][1] < -1e-2                     # and the forget answers still go down
    with pytest.raises(ValueError, match="retain_projection must be"):
        get_unlearner("ga").hparams(retain_projection=0.0)
