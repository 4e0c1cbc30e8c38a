"""GRACE and WISE on tiny models: the codebook rule and the routing against plain references, a memory
that never touches the weights, bit-exact undo / save / load, refusals, and the CLI contract."""

from __future__ import annotations

import json

import pytest
import torch

from knowscope.cli import main
from knowscope.editing.editors import MEMORY_EDITORS, get_editor
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.grace import GRACEHyperParams, GraceMemory, label_of
from knowscope.editing.memory import memory_of, value_inputs
from knowscope.editing.session import EditMismatchError, EditResult, EditSession
from knowscope.editing.wise import WiseMemory, shard_mask, ties_merge
from knowscope.facts import Fact, save_facts

FACTS = [
    Fact(subject="Eiffel Tower", prompt="The {} is located in the city of", target_true="Paris", target_new="Rome",
         case_id=0, paraphrase_prompts=["The Eiffel Tower stands in"], neighborhood_prompts=["The Louvre is in"]),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball",
         case_id=1, paraphrase_prompts=["Messi plays"], neighborhood_prompts=["Cristiano Ronaldo plays"]),
    Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico", case_id=2,
         neighborhood_prompts=["Kyoto is in"]),
]
FAST_GRACE = {"n_iter": 5}
FAST_WISE = {"n_iter": 4, "n_templates": 1}
FAST_FACTKEY = {"n_iter": 5, "relation_radius": 0.01}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters().items()}


def _same_weights(model, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in model.named_parameters().items())


def _hp(model, method: str, **extra):
    fast = {"grace": FAST_GRACE, "wise": FAST_WISE, "factkey": FAST_FACTKEY}[method]
    return get_editor(method).hparams.for_model(model, **fast, **extra)


def _logits(model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(model.to_tokens(text))


def _session(model):
    snap = _snapshot(model)
    s = EditSession(model)
    yield s
    s.rollback()
    assert _same_weights(model, snap) and memory_of(model) is None


@pytest.fixture
def session(tiny):
    """A session on each tiny architecture, rolled back (weights and memory) after the test."""
    yield from _session(tiny)


@pytest.fixture
def lsession(tiny_llama):
    yield from _session(tiny_llama)


def test_memory_editors_are_registered():
    assert set(MEMORY_EDITORS) == {"grace", "wise", "factkey"}
    assert get_editor("GRACE").memory and not get_editor("rome").memory


# --------------------------------------------------------------------------------------------------
# GRACE


def test_grace_rewrite_equals_a_plain_per_position_loop(tiny):
    mem = GraceMemory(tiny, 1, {})
    g = torch.Generator().manual_seed(0)
    n = 5
    mem.keys = torch.randn(n, mem.d_in, generator=g)
    mem.values = torch.randn(n, mem.d_out, generator=g)
    mem.radii = torch.full((n,), 0.0)
    mem.labels = torch.arange(n)
    mem.n_edits = 1
    a = torch.randn(2, 6, mem.d_in, generator=g)
    a[0, 3] = mem.keys[2] + 0.01  # near key 2
    a[1, 5] = mem.keys[4]  # on key 4
    mem.radii = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5])
    out = torch.randn(2, 6, mem.d_out, generator=g)
    got = mem.rewrite(a, out)
    want = out.clone()
    for b in range(2):
        for p in range(6):
            d = [float((a[b, p] - mem.keys[i]).norm()) for i in range(n)]
            i = min(range(n), key=lambda j: d[j])
            if d[i] <= float(mem.radii[i]):
                want[b, p] = mem.values[i]
    assert torch.equal(got, want)
    assert not torch.equal(got[0, 3], out[0, 3]) and torch.equal(got[0, 0], out[0, 0])


def test_grace_codebook_rule_add_expand_replace_split(tiny_llama, lsession):
    model = tiny_llama
    hp = _hp(model, "grace")
    fact = FACTS[0]
    r1 = get_editor("grace")(model, [fact], hparams=hp)
    assert r1.extra["per_request"][0]["action"] == "add" and r1.memory["rows"].tolist() == [0]
    lsession.apply(r1)
    same = get_editor("grace")(model, [fact], hparams=hp)  # the same prompt and target: the entry is retrained
    assert same.extra["per_request"][0]["action"] == "expand" and same.memory["rows"].tolist() == [0]
    other = Fact(subject=fact.subject, prompt=fact.prompt, target_true=fact.target_true, target_new="Berlin")
    rep = get_editor("grace")(model, [other], hparams=hp)
    assert rep.extra["per_request"][0]["action"] == "replace"
    assert rep.extra["per_request"][0]["affects"]["row"] == 0 and "overwritten" in rep.extra["per_request"][0][
        "affects"]["effect"]  # an earlier edit never disappears silently
    assert r1.extra["per_request"][0]["affects"] is None
    assert int(rep.memory["labels"][0]) == label_of(model.encode_target(" Berlin"))
    # an input within eps + radius of a key with another label: both radii become half the distance
    near = Fact(subject="Eiffel Tower", prompt="The {} is located in the town of", target_true="Paris",
                target_new="Oslo")
    d = float(torch.cdist(value_inputs(model, hp.layer, [near.text])[0][-1:],
                          value_inputs(model, hp.layer, [fact.text])[0][-1:]))
    wide = hp.with_(eps=d * 2)
    split = get_editor("grace")(model, [near], hparams=wide)
    info = split.extra["per_request"][0]
    assert info["action"] == "split" and split.memory["rows"].tolist() == [0, 1]
    assert info["affects"]["row"] == 0 and "shrunk" in info["affects"]["effect"]
    torch.testing.assert_close(split.memory["radii"], torch.tensor([d / 2 - 1e-5, d / 2]), rtol=1e-4, atol=1e-4)


def test_grace_routes_the_edit_and_leaves_other_prompts_bit_identical(tiny, session):
    base_other = _logits(tiny, "Cristiano Ronaldo plays")
    base_edit = _logits(tiny, FACTS[0].text)
    snap = _snapshot(tiny)
    result = get_editor("grace")(tiny, FACTS[:1], hparams=_hp(tiny, "grace"))
    assert not result.deltas and result.is_memory_edit
    session.apply(result)
    assert _same_weights(tiny, snap)  # the weights never move
    routes = session.memory.route([FACTS[0].text, "Cristiano Ronaldo plays"])
    assert routes[0].routed and routes[0].memory == "grace[0]" and routes[0].score <= routes[0].threshold
    assert not routes[1].routed and routes[1].memory == "main"
    assert torch.equal(_logits(tiny, "Cristiano Ronaldo plays"), base_other)
    assert not torch.equal(_logits(tiny, FACTS[0].text), base_edit)
    with session.unedited():
        assert torch.equal(_logits(tiny, FACTS[0].text), base_edit)


def test_grace_radius_that_routes_everything_is_refused(tiny_llama, lsession):
    with pytest.raises(ValueError, match="routes everything: every generic text"):
        get_editor("grace")(tiny_llama, FACTS[:1], hparams=_hp(tiny_llama, "grace", eps=1e6))
    assert memory_of(tiny_llama) is None


def test_grace_subject_key_reads_the_subject_token(tiny_llama, lsession):
    hp = _hp(tiny_llama, "grace", key="subject")
    result = get_editor("grace")(tiny_llama, FACTS[:1], hparams=hp)
    key = result.memory["keys"][0]
    span = tiny_llama.subject_span(FACTS[0].prompt, FACTS[0].subject)
    assert torch.equal(key, value_inputs(tiny_llama, hp.layer, [FACTS[0].text])[0][span[1] - 1])


# --------------------------------------------------------------------------------------------------
# WISE


def test_wise_rewrite_equals_a_plain_per_position_reference(tiny):
    mem = WiseMemory(tiny, 1, {"mask_ratio": 0.5, "seed": 0, "act_ratio": 0.9, "density": 0.5})
    g = torch.Generator().manual_seed(1)
    mem.shards = torch.randn(2, mem.d_out, mem.d_in, generator=g) * 0.1
    mem.shard_min = torch.tensor([1.0, 2.0])
    mem.delta = torch.randn(mem.d_out, mem.d_in, generator=g) * 0.1
    mem.acts = torch.tensor([1.5, 3.0])
    mem.n_edits = 3
    a = torch.randn(2, 5, mem.d_in, generator=g) * 3
    a[0, :3] *= 1e-3  # these positions score below every threshold
    out = torch.randn(2, 5, mem.d_out, generator=g)
    got = mem.rewrite(a, out)
    deltas = [mem.shards[0], mem.shards[1], mem.delta]
    thresholds = [0.9 * 1.0, 0.9 * 2.0, 0.9 * 1.5]
    want = out.clone()
    routed = 0
    for b in range(2):
        for p in range(5):
            scores = [float((d @ a[b, p]).norm()) for d in deltas]
            over = [i for i in range(3) if scores[i] > thresholds[i]]
            if over:
                best = max(over, key=lambda i: scores[i])
                want[b, p] = out[b, p] + deltas[best] @ a[b, p]
                routed += 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert 0 < routed < 10  # the reference exercised both branches


def test_ties_merge_equals_a_plain_per_entry_reference():
    g = torch.Generator().manual_seed(2)
    ds = [torch.randn(4, 6, generator=g) for _ in range(3)]
    got = ties_merge(ds, 0.5)
    kept = []
    for d in ds:
        order = sorted(range(d.numel()), key=lambda i: -abs(float(d.flatten()[i])))[: d.numel() // 2]
        k = torch.zeros(d.numel())
        k[order] = d.flatten()[order]
        kept.append(k)
    want = torch.zeros(ds[0].numel())
    for i in range(want.numel()):
        vals = [float(k[i]) for k in kept]
        total = sum(vals)
        agree = [v for v in vals if v != 0 and (v > 0) == (total > 0)]
        want[i] = sum(agree) / len(agree) if agree else 0.0
    torch.testing.assert_close(got.flatten(), want, rtol=1e-6, atol=1e-6)


def test_wise_trains_only_its_shard_mask_and_stores_shards(tiny_llama, lsession):
    model = tiny_llama
    hp = _hp(model, "wise", save_freq=1, merge_freq=2, act_margin=(0.0, 0.1, 0.05))
    first = get_editor("wise")(model, FACTS[:1], hparams=hp)
    mask = shard_mask(model.arch.d_model, model.arch.d_mlp, hp.mask_ratio, hp.seed, 0)
    assert first.memory["values"].shape == (int(mask.sum()),) and int(first.memory["close"]) == 1
    lsession.apply(first)
    mem = lsession.memory
    assert mem.shards.shape[0] == 1 and torch.equal(mem.shards[0][~mask], torch.zeros(int((~mask).sum())))
    second = get_editor("wise")(model, FACTS[1:2], hparams=hp)
    assert int(second.memory["merge"]) == 2
    lsession.apply(second)
    assert mem.shards.shape[0] == 1  # the two stored shards merged into one
    lsession.undo()
    assert mem.shards.shape[0] == 1 and torch.equal(mem.shards[0][mask], first.memory["values"])


# --------------------------------------------------------------------------------------------------
# sessions: undo, save / load, refusals, mixing with weight edits


@pytest.mark.parametrize("method", ["grace", "wise", "factkey"])
def test_memory_edits_undo_save_and_load_bit_identical(tiny_llama, lsession, tmp_path, method):
    model = tiny_llama
    hp = _hp(model, method, **({"act_margin": (0.0, 0.1, 0.05)} if method == "wise" else {}))
    base = _logits(model, FACTS[1].text)
    lsession.apply(get_editor(method)(model, FACTS[:1], hparams=hp))
    state1 = {k: v.clone() for k, v in lsession.memory.state().items()}
    lsession.apply(get_editor(method)(model, FACTS[1:2], hparams=hp))
    state2 = {k: v.clone() for k, v in lsession.memory.state().items()}
    edited = _logits(model, FACTS[1].text)
    lsession.save(tmp_path / "s")
    lsession.undo()
    assert all(torch.equal(v, state1[k]) for k, v in lsession.memory.state().items())
    lsession.undo()
    assert memory_of(model) is None and torch.equal(_logits(model, FACTS[1].text), base)
    loaded = EditSession.load(model, tmp_path / "s")
    try:
        assert all(torch.equal(v, state2[k]) for k, v in loaded.memory.state().items())
        assert torch.equal(_logits(model, FACTS[1].text), edited)
    finally:
        loaded.rollback()
    assert memory_of(model) is None


def test_memory_edit_of_another_model_is_refused(tiny_llama, tiny_gpt2, tmp_path):
    result = get_editor("grace")(tiny_llama, FACTS[:1], hparams=_hp(tiny_llama, "grace"))
    result.save(tmp_path / "e")
    with pytest.raises(EditMismatchError, match="different model"):
        EditSession.load(tiny_gpt2, tmp_path / "e")
    assert memory_of(tiny_gpt2) is None


def test_weight_edits_go_below_memory_edits(tiny_llama, lsession):
    model = tiny_llama
    name = model.arch.mlp_out_name(1)
    weight = EditResult(method="test", deltas={name: torch.full_like(model.parameter(name), 1e-3)},
                        fingerprint=model.fingerprint, layers=[1], model_name=model.name)
    lsession.apply(weight)  # weights first: fine
    lsession.apply(get_editor("grace")(model, FACTS[:1], hparams=_hp(model, "grace")))
    snap = _snapshot(model)
    with pytest.raises(EditMismatchError, match="weight edits go below memory edits"):
        lsession.apply(weight)
    assert _same_weights(model, snap) and len(lsession.history) == 2
    # another memory kind (or layer) cannot join the one the model carries
    with pytest.raises(Exception, match="one side memory per model"):
        get_editor("wise")(model, FACTS[1:2], hparams=_hp(model, "wise"))


def test_plain_blocks_step_aside_while_a_memory_is_attached(tiny_llama, lsession):
    from knowscope.models.plain import PlainBlocks, PlainNotNow

    lsession.apply(get_editor("grace")(tiny_llama, FACTS[:1], hparams=_hp(tiny_llama, "grace")))
    with pytest.raises(PlainNotNow, match="hook"):
        PlainBlocks(tiny_llama, 0)
    lsession.undo()
    PlainBlocks(tiny_llama, 0)


def test_evaluate_reports_routing_per_prompt(tiny_llama, lsession):
    ref = pre_edit_predictions(tiny_llama, FACTS)
    lsession.apply(get_editor("grace")(tiny_llama, FACTS[:1], hparams=_hp(tiny_llama, "grace")))
    metrics = evaluate(tiny_llama, FACTS, reference=ref, fluency=False)
    routing = metrics.per_fact[0]["routing"]
    assert routing["rewrite"][0]["routed"] and routing["rewrite"][0]["memory"] == "grace[0]"
    assert {"score", "threshold", "position", "token"} <= set(routing["neighborhood"][0])
    assert metrics.notes["routing"]["routed_share"]["rewrite"] == pytest.approx(1 / 3)
    assert metrics.efficacy_score >= 1 / 3


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("facts") / "facts.json"
    save_facts(FACTS, path)
    return path


@pytest.mark.parametrize("method", ["grace", "wise", "factkey"])
def test_cli_memory_editor_sequential_metrics(method, data, tmp_path, capsys, monkeypatch):
    cls = get_editor(method).hparams
    fast = {"grace": FAST_GRACE, "wise": {**FAST_WISE, "act_margin": (0.0, 0.1, 0.05)}, "factkey": FAST_FACTKEY}[method]
    original = cls.for_model.__func__
    monkeypatch.setattr(cls, "for_model", classmethod(lambda c, model, **kw: original(c, model, **{**fast, **kw})))
    out = tmp_path / "r.json"
    code = main(["edit", "--model", "tiny-llama", "--method", method, "--sequential", "--batch-size", "1",
                 "--data", str(data), "--no-fluency", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert {"efficacy_score", "paraphrase_score", "neighborhood_score", "locality_acc"} <= set(res["metrics"])
    assert res["n_edits"] == 3 and res["n_edit_calls"] == 3 and res["method"] == method
    assert all("routing" in row for row in res["per_fact"])


def test_cli_memory_run_dir_resumes(data, tmp_path, capsys, monkeypatch):
    original = GRACEHyperParams.for_model.__func__
    monkeypatch.setattr(GRACEHyperParams, "for_model",
                        classmethod(lambda c, model, **kw: original(c, model, **{**FAST_GRACE, **kw})))
    probe = tmp_path / "probe.json"
    save_facts([Fact(subject="Rome", prompt="{} is the capital of", target_true="Italy", target_new="France",
                     case_id=9, neighborhood_prompts=["Milan is a city in"])], probe)
    run_dir, out = tmp_path / "run", tmp_path / "r.json"
    base = ["edit", "--model", "tiny-llama", "--method", "grace", "--data", str(data), "--sequential",
            "--no-fluency", "--run-dir", str(run_dir), "--probe", "1", "--probe-data", str(probe), "--json", str(out)]
    assert main([*base, "--max-batches", "2"]) == 0
    first = json.loads(out.read_text())
    assert [r["edits"] for r in first["monitor"]] == [0, 1, 2]
    assert main(base) == 0
    res = json.loads(out.read_text())
    assert [r["edits"] for r in res["monitor"]] == [0, 1, 2, 3] and res["monitor"][2] == first["monitor"][2]
    assert res["n_edits"] == 3 and res["metrics"]["efficacy_score"] is not None
    assert {"paraphrase", "rephrase_acc", "locality"} <= set(res["monitor"][3]["signals"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--method", "grace", "--layers", "1-2"], "one layer"),
    (["--method", "wise", "--null-space"], "--null-space is for --method memit"),
    (["--method", "wise", "--key", "subject"], "--key is for --method grace"),
])
def test_cli_memory_editor_errors_are_one_line(argv, message, data, capsys):
    code = main(["edit", "--model", "tiny-llama", "--data", str(data), "--no-fluency", *argv])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_blocks_above_equal_the_bridges_blocks(tiny):
    """WISE's training forward: the blocks above the memory's layer on ``h + change`` give the bridge's
    logits (plain tensor code on Llama, checked and recorded once; the bridge's blocks on GPT-2)."""
    from knowscope.editing.memory_fit import blocks_above
    from knowscope.models.blocks import block_input, final_logits, run_block

    tokens = torch.stack([tiny.to_tokens("The Eiffel Tower is in the city of")[0][:8],
                          tiny.to_tokens("Lionel Messi plays the sport of golf")[0][:8]])
    h = run_block(tiny, 1, block_input(tiny, 1, tokens))
    rows, pos = torch.tensor([0, 0, 1]), torch.tensor([3, 7, 5])
    change = torch.randn(h.shape, generator=torch.Generator().manual_seed(3)) * 0.3
    got = blocks_above(tiny, 1, h, rows, pos)(change)
    want = h + change
    for block in range(2, tiny.arch.n_layers):
        want = run_block(tiny, block, want)
    torch.testing.assert_close(got, final_logits(tiny, want[rows, pos]).float(), rtol=1e-4, atol=1e-4)
    if tiny.arch.family == "llama":
        assert tiny.compat.edit_checks[("memory-above.1", "plain")] is True
