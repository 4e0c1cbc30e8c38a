"""FactKey on tiny models: the two-key routing against a plain per-position loop (full passes and KV-cache
steps), generation with the cache equal to recomputing, an entry that answers only for its subject AND
relation, a same-subject second edit that keeps the first, the codebook rule reported, packed scoring off."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import scoring
from knowscope.editing.editors import get_editor
from knowscope.editing.factkey import FactKeyHyperParams, FactKeyMemory, subject_seen, subject_spellings
from knowscope.editing.memory import memory_of, value_inputs
from knowscope.editing.session import EditSession
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


def _relation_key(model, hp: FactKeyHyperParams, fact: Fact) -> torch.Tensor:
    return value_inputs(model, hp.layer, [fact.text])[0][-1]


def _hp(model) -> FactKeyHyperParams:
    """A relation radius below the distances that separate the facts' relation keys (a tiny random model's
    activations are close together)."""
    hp = FactKeyHyperParams.for_model(model, n_iter=20)
    r_t, r_b = _relation_key(model, hp, TOWER), _relation_key(model, hp, TOWER_BUILDER)
    return hp.with_(relation_radius=_cos(r_t, r_b) / 3)


def test_subject_seen_equals_a_plain_substring_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (4, 12), generator=g)
    spellings = torch.full((3, 2, 4), -1)
    spellings[0, 0, :2] = torch.tensor([1, 2])
    spellings[0, 1, :1] = torch.tensor([5])
    spellings[1, 0, :3] = torch.tensor([3, 3, 4])
    spellings[2, 0, :1] = torch.tensor([0])
    ids[0, 3:5] = torch.tensor([1, 2])
    ids[1, 0:3] = torch.tensor([3, 3, 4])
    want = torch.zeros(4, 12, 3, dtype=torch.bool)
    for b in range(4):
        for t in range(12):
            for e in range(3):
                for v in spellings[e]:
                    v = [int(x) for x in v if x >= 0]
                    if v and t + 1 >= len(v) and ids[b, t + 1 - len(v) : t + 1].tolist() == v:
                        want[b, t, e] = True
    assert torch.equal(subject_seen(ids, spellings), want)
    # the same, one position at a time with the ids before it as context (KV-cache decoding)
    steps = [subject_seen(ids[:, t : t + 1], spellings, context=ids[:, max(0, t - 3) : t] if t else None)
             for t in range(12)]
    assert torch.equal(torch.cat(steps, dim=1), want)


def test_subject_spellings_cover_both_spacings(tiny_llama):
    sp = subject_spellings(tiny_llama, TOWER)
    enc = tiny_llama.tokenizer.encode
    got = [[int(x) for x in row if x >= 0] for row in sp]
    assert all(enc(x, add_special_tokens=False) in got for x in (" Eiffel Tower", "Eiffel Tower"))
    long = Fact(subject=" ".join(["word"] * 40), prompt="{} is", target_true="a", target_new="b")
    with pytest.raises(ValueError, match="tokens long"):
        get_editor("factkey")(tiny_llama, [long], hparams=_hp(tiny_llama))


def test_factkey_routing_equals_a_plain_per_position_loop(tiny_llama):
    mem = FactKeyMemory(tiny_llama, 3, {})
    g = torch.Generator().manual_seed(0)
    n, batch, pos = 4, 3, 7
    mem.subject_ids = torch.full((n, 3, 16), -1)
    for e, spelled in enumerate(([7, 8], [9], [10, 11, 12], [13])):
        mem.subject_ids[e, 0, : len(spelled)] = torch.tensor(spelled)
    mem.relation_keys = torch.nn.functional.normalize(torch.randn(n, mem.d_in, generator=g), dim=-1)
    mem.values = torch.randn(n, mem.d_out, generator=g)
    mem.relation_radii = torch.tensor([0.2, 0.3, 0.25, 0.2])
    mem.labels = torch.arange(n)
    ids = torch.randint(20, 30, (batch, pos), generator=g)
    a = torch.randn(batch, pos, mem.d_in, generator=g)
    ids[0, 1:3] = torch.tensor([7, 8])  # subject of entry 0 early in row 0 ...
    a[0, 5] = mem.relation_keys[0] + 0.01 * torch.randn(mem.d_in, generator=g)  # ... its relation later
    a[0, 0] = mem.relation_keys[1]  # relation of entry 1 without its subject: not routed
    ids[1, 4] = 13
    a[1, 3] = mem.relation_keys[3]  # relation BEFORE the subject: not routed
    a[1, 6] = mem.relation_keys[3]  # after it: routed
    ids[2, 1], ids[2, 3] = 9, 13  # two subjects: the nearer relation (relative to its radius) wins
    a[2, 6] = 0.5 * (mem.relation_keys[1] + mem.relation_keys[3]) + 0.6 * mem.relation_keys[3]
    out = torch.randn(batch, pos, mem.d_out, generator=g)

    want = out.clone()
    for b in range(batch):
        for t in range(pos):
            best, best_ratio = None, 1.0
            for e in range(n):
                spelled = [int(x) for x in mem.subject_ids[e, 0] if x >= 0]
                seen = any(ids[b, p + 1 - len(spelled) : p + 1].tolist() == spelled
                           for p in range(len(spelled) - 1, t + 1))
                ratio = _cos(a[b, t], mem.relation_keys[e]) / float(mem.relation_radii[e])
                if seen and ratio <= best_ratio:
                    best, best_ratio = e, ratio
            if best is not None:
                want[b, t] = mem.values[best]

    mem.n_edits = 1
    mem.attach()
    try:
        mem._read_ids(None, (ids,), {}, None)  # one pass over every position
        full = mem.rewrite(a, out)
        steps = []  # a prefill of 2 positions (entry 0's subject spans the boundary), then one at a time
        mem._read_ids(None, (ids[:, :2],), {}, None)
        steps.append(mem.rewrite(a[:, :2], out[:, :2]))
        for t in range(2, pos):
            mem._read_ids(None, (ids[:, t : t + 1],), {}, None)
            steps.append(mem.rewrite(a[:, t : t + 1], out[:, t : t + 1]))
    finally:
        mem.detach()
    torch.testing.assert_close(full, want, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(steps, dim=1), want, rtol=0, atol=0)
    assert not torch.equal(full[0, 5], out[0, 5]) and torch.equal(full[0, 0], out[0, 0])
    assert torch.equal(full[1, 3], out[1, 3]) and not torch.equal(full[1, 6], out[1, 6])
    assert torch.equal(full[2, 6], mem.values[3])


def test_factkey_answers_for_its_subject_and_relation_only(tiny_llama, session):
    model, hp = tiny_llama, _hp(tiny_llama)
    base = {f.text: _logits(model, f.text) for f in (TOWER, TOWER_BUILDER, LOUVRE)}
    result = get_editor("factkey")(model, [TOWER], hparams=hp)
    assert result.is_memory_edit and not result.deltas and result.memory["rows"].tolist() == [0]
    assert torch.equal(result.memory["subject_ids"][0], subject_spellings(model, TOWER))
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
    d = _cos(_relation_key(model, hp, near), _relation_key(model, hp, TOWER))
    session.undo()
    session.apply(get_editor("factkey")(model, [TOWER], hparams=wide))
    split = get_editor("factkey")(model, [near], hparams=wide)
    info = split.extra["per_request"][0]
    assert info["action"] == "split" and split.memory["rows"].tolist() == [0, 1]
    assert "shrunk" in info["affects"]["effect"]
    torch.testing.assert_close(split.memory["relation_radii"], torch.tensor([d / 2 - 1e-6, d / 2]), rtol=1e-3,
                               atol=1e-5)


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


def test_factkey_hyperparameters_refuse_bad_values():
    with pytest.raises(ValueError, match="cosine distance in"):
        FactKeyHyperParams(relation_radius=0)
    with pytest.raises(ValueError, match="n_iter"):
        FactKeyHyperParams(n_iter=0)
