"""FactKey on tiny models: the two-key routing against a plain per-position loop (full passes and KV-cache
steps), generation with the cache equal to recomputing, an entry that answers only for its subject AND
relation, a same-subject second edit that keeps the first, the codebook rule reported, packed scoring off."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import scoring
from knowscope.editing.editors import get_editor
from knowscope.editing.factkey import FactKeyHyperParams, FactKeyMemory, subject_stats
from knowscope.editing.memory import memory_of, value_inputs
from knowscope.editing.session import EditMismatchError, EditSession
from knowscope.facts import Fact

TOWER = Fact(subject="Eiffel Tower", prompt="The {} is located in the city of", target_true="Paris",
             target_new="Rome", case_id=0)
TOWER_BUILDER = Fact(subject="Eiffel Tower", prompt="The {} was designed by the engineer", target_true="Gustave",
                     target_new="Newton", case_id=1)
LOUVRE = Fact(subject="Louvre", prompt="The {} is located in the city of", target_true="Paris", target_new="Oslo",
              case_id=2)


@pytest.fixture
def session(tiny_llama):
    s = EditSession(tiny_llama)
    yield s
    s.rollback()
    assert memory_of(tiny_llama) is None


def _logits(model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(model.to_tokens(text))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(1 - torch.nn.functional.cosine_similarity(a, b, dim=-1))


def _keys(model, hp: FactKeyHyperParams, fact: Fact) -> tuple[torch.Tensor, torch.Tensor]:
    """The fact's subject key (standardised as the memory does) and relation key, from plain forward passes."""
    pos = model.subject_span(fact.prompt, fact.subject)[1] - 1
    center, scale = subject_stats(model, hp.subject_layer)
    return ((value_inputs(model, hp.subject_layer, [fact.text])[0][pos] - center) / scale,
            value_inputs(model, hp.layer, [fact.text])[0][-1])


def _hp(model) -> FactKeyHyperParams:
    """Radii below the distances that separate the three facts (a tiny random model's activations are
    close together): each fact's subject and relation keys are its own."""
    hp = FactKeyHyperParams.for_model(model, n_iter=20)
    (s_t, r_t), (s_b, r_b), (s_l, r_l) = (_keys(model, hp, f) for f in (TOWER, TOWER_BUILDER, LOUVRE))
    return hp.with_(subject_radius=_cos(s_t, s_l) / 3, relation_radius=min(_cos(r_t, r_b), _cos(r_t, r_l)) / 3)


def test_factkey_routing_equals_a_plain_per_position_loop(tiny_llama):
    mem = FactKeyMemory(tiny_llama, 3, {"subject_layer": 1})
    g = torch.Generator().manual_seed(0)
    n, batch, pos = 4, 3, 7
    mem.subject_keys = torch.nn.functional.normalize(torch.randn(n, mem.d_in, generator=g), dim=-1)
    mem.relation_keys = torch.nn.functional.normalize(torch.randn(n, mem.d_in, generator=g), dim=-1)
    mem.values = torch.randn(n, mem.d_out, generator=g)
    mem.subject_radii = torch.full((n,), 0.2)
    mem.relation_radii = torch.tensor([0.2, 0.3, 0.25, 0.2])
    mem.labels = torch.arange(n)
    a_s = torch.randn(batch, pos, mem.d_in, generator=g)
    a_r = torch.randn(batch, pos, mem.d_in, generator=g)
    a_s[0, 1] = mem.subject_keys[1] * 3  # subject of entry 1 early in row 0 ...
    a_r[0, 5] = mem.relation_keys[1] + 0.01 * torch.randn(mem.d_in, generator=g)  # ... its relation later
    a_r[0, 0] = mem.relation_keys[2]  # relation of entry 2 without its subject: not routed
    a_s[1, 4] = mem.subject_keys[3]
    a_r[1, 3] = mem.relation_keys[3]  # relation BEFORE the subject: not routed
    a_r[1, 6] = mem.relation_keys[3]  # after it: routed
    a_s[2, 2], a_s[2, 3] = mem.subject_keys[0], mem.subject_keys[1]  # two subjects: the nearer relation wins
    a_r[2, 6] = 0.5 * (mem.relation_keys[0] + mem.relation_keys[1]) + 0.6 * mem.relation_keys[1]
    out = torch.randn(batch, pos, mem.d_out, generator=g)

    want = out.clone()
    for b in range(batch):
        for t in range(pos):
            best, best_ratio = None, 1.0
            for e in range(n):
                seen = any(_cos(a_s[b, p], mem.subject_keys[e]) <= float(mem.subject_radii[e]) for p in range(t + 1))
                ratio = _cos(a_r[b, t], mem.relation_keys[e]) / float(mem.relation_radii[e])
                if seen and ratio <= best_ratio:
                    best, best_ratio = e, ratio
            if best is not None:
                want[b, t] = mem.values[best]

    mem.n_edits = 1
    mem.attach()
    try:
        mem._read_subject(None, None, a_s)  # one pass over every position
        full = mem.rewrite(a_r, out)
        steps = []  # a prefill of 4 positions, then one position at a time (KV-cache decoding)
        mem._read_subject(None, None, a_s[:, :4])
        steps.append(mem.rewrite(a_r[:, :4], out[:, :4]))
        for t in range(4, pos):
            mem._read_subject(None, None, a_s[:, t : t + 1])
            steps.append(mem.rewrite(a_r[:, t : t + 1], out[:, t : t + 1]))
    finally:
        mem.detach()
    torch.testing.assert_close(full, want, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(steps, dim=1), want, rtol=0, atol=0)
    assert not torch.equal(full[0, 5], out[0, 5]) and torch.equal(full[0, 0], out[0, 0])
    assert torch.equal(full[1, 3], out[1, 3]) and not torch.equal(full[1, 6], out[1, 6])
    assert torch.equal(full[2, 6], mem.values[1])


def test_factkey_answers_for_its_subject_and_relation_only(tiny_llama, session):
    model, hp = tiny_llama, _hp(tiny_llama)
    base = {f.text: _logits(model, f.text) for f in (TOWER, TOWER_BUILDER, LOUVRE)}
    result = get_editor("factkey")(model, [TOWER], hparams=hp)
    assert result.is_memory_edit and not result.deltas and result.memory["rows"].tolist() == [0]
    key = (_keys(model, hp, TOWER)[0])
    torch.testing.assert_close(result.memory["subject_keys"][0], key / key.norm())  # standardised, unit length
    session.apply(result)
    routes = session.memory.route([TOWER.text, TOWER_BUILDER.text, LOUVRE.text])
    assert [r.routed for r in routes] == [True, False, False] and routes[0].memory == "factkey[0]"
    assert not torch.equal(_logits(model, TOWER.text), base[TOWER.text])
    # the same subject's other relation and the same relation's other subject: bit-identical
    assert torch.equal(_logits(model, TOWER_BUILDER.text), base[TOWER_BUILDER.text])
    assert torch.equal(_logits(model, LOUVRE.text), base[LOUVRE.text])


def test_factkey_same_subject_second_edit_keeps_the_first(tiny_llama, session):
    model, hp = tiny_llama, _hp(tiny_llama)
    session.apply(get_editor("factkey")(model, [TOWER], hparams=hp))
    first = _logits(model, TOWER.text)
    second = get_editor("factkey")(model, [TOWER_BUILDER], hparams=hp)
    info = second.extra["per_request"][0]
    assert info["action"] == "add" and info["affects"] is None and second.memory["rows"].tolist() == [1]
    session.apply(second)
    routes = session.memory.route([TOWER.text, TOWER_BUILDER.text])
    assert [r.memory for r in routes] == ["factkey[0]", "factkey[1]"]
    assert torch.equal(_logits(model, TOWER.text), first)


def test_factkey_codebook_rule_is_reported(tiny_llama, session):
    model, hp = tiny_llama, _hp(tiny_llama)
    session.apply(get_editor("factkey")(model, [TOWER], hparams=hp))
    again = get_editor("factkey")(model, [TOWER], hparams=hp)  # same fact, same target: the entry is reused
    assert again.extra["per_request"][0]["action"] == "reuse" and again.memory["rows"].tolist() == [0]
    moved = Fact(subject=TOWER.subject, prompt=TOWER.prompt, target_true="Paris", target_new="Berlin")
    rep = get_editor("factkey")(model, [moved], hparams=hp)
    info = rep.extra["per_request"][0]
    assert info["action"] == "replace" and info["affects"]["row"] == 0 and "overwritten" in info["affects"]["effect"]
    # a nearby relation with another target, inside a wide relation radius: both radii shrink, both kept
    wide = hp.with_(relation_radius=1.9)
    near = Fact(subject=TOWER.subject, prompt="The {} is located in the town of", target_true="Paris",
                target_new="Oslo")
    d = _cos(_keys(model, hp, near)[1], _keys(model, hp, TOWER)[1])
    session.undo()
    session.apply(get_editor("factkey")(model, [TOWER], hparams=wide))
    split = get_editor("factkey")(model, [near], hparams=wide)
    info = split.extra["per_request"][0]
    assert info["action"] == "split" and split.memory["rows"].tolist() == [0, 1]
    assert "shrunk" in info["affects"]["effect"]
    torch.testing.assert_close(split.memory["relation_radii"], torch.tensor([d / 2 - 1e-6, d / 2]), rtol=1e-3,
                               atol=1e-5)


def test_factkey_edit_with_another_standardisation_is_refused(tiny_llama, session):
    hp = _hp(tiny_llama)
    session.apply(get_editor("factkey")(tiny_llama, [TOWER], hparams=hp))
    other = get_editor("factkey")(tiny_llama, [LOUVRE], hparams=hp)
    other.memory["subject_center"] = other.memory["subject_center"] + 1.0
    state = {k: v.clone() for k, v in session.memory.state().items()}
    with pytest.raises(EditMismatchError, match="another subject center"):
        session.apply(other)
    assert all(torch.equal(v, state[k]) for k, v in session.memory.state().items())


def test_factkey_generation_with_the_cache_equals_recomputing(tiny_llama, session):
    """Batched, left-padded greedy decoding with the KV cache (what evaluate() generates with) gives the
    tokens of recomputing every prompt's whole sequence at each step."""
    model = tiny_llama
    assert model.compat.kv_cache  # else this would not test cached decoding
    session.apply(get_editor("factkey")(model, [TOWER], hparams=_hp(model)))
    prompts = ["Some words first. The Eiffel Tower is located in the city of", TOWER.text, LOUVRE.text]
    assert session.memory.route([TOWER.text])[0].routed
    rows = [[int(t) for t in model.to_tokens(p)[0]] for p in prompts]
    cached = scoring._sample_rows(model, rows, 6, None, [])
    for row, got in zip(rows, cached, strict=True):
        loop = torch.tensor([row])
        with torch.no_grad():
            for _ in range(6):
                loop = torch.cat([loop, model(loop)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert got == loop[0].tolist()
    with session.unedited():
        unedited = scoring._sample_rows(model, rows[1:2], 6, None, [])
    assert unedited[0] != cached[1]  # the edit answers in the cached decoding too


def test_scoring_does_not_pack_prompts_while_a_factkey_memory_is_attached(tiny_llama, session, monkeypatch):
    session.apply(get_editor("factkey")(tiny_llama, [TOWER], hparams=_hp(tiny_llama)))
    monkeypatch.setattr(tiny_llama.compat, "score_mode", "packed")

    def packed(*args, **kwargs):
        raise AssertionError("packed scoring with a memory that routes by earlier positions")

    monkeypatch.setattr(scoring, "_score_packed", packed)
    got = scoring.score_continuations(tiny_llama, [(TOWER.text, " Rome"), (LOUVRE.text, " Paris")])
    assert len(got) == 2


def test_factkey_hyperparameters_refuse_bad_values(tiny_llama):
    with pytest.raises(ValueError, match="cosine distance in"):
        FactKeyHyperParams(subject_radius=0)
    with pytest.raises(ValueError, match="must not lie above"):
        FactKeyHyperParams(layer=1, subject_layer=2)
    with pytest.raises(ValueError, match="route some position of every generic text"):
        get_editor("factkey")(tiny_llama, [TOWER], hparams=FactKeyHyperParams.for_model(
            tiny_llama, subject_radius=1.99, relation_radius=1.99, n_iter=1))
    assert memory_of(tiny_llama) is None
