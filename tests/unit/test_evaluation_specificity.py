"""Relation specificity, portability and generation-based scores, against plain references on tiny models.

The supposed-to-change rule is by (subject, relation): a prompt is never left out for naming an edited
subject alone. KnowEdit's Relation_Specificity prompts count in relation_specificity and in locality; a
hijacking memory entry (the subject's key, any relation) is caught by relation specificity.
"""

from __future__ import annotations

import json

import pytest
import torch

from knowscope.editing.evaluation import (
    EditedFacts,
    EditMetrics,
    begins_with,
    evaluate,
    greedy_continuations,
    normalize,
    pre_edit_predictions,
)
from knowscope.editing.evaluation.generation import greedy_from_scores
from knowscope.editing.grace import KIND, _spec, label_of
from knowscope.editing.keys import facts_meta
from knowscope.editing.memory import memory_of, value_inputs
from knowscope.editing.session import EditResult, EditSession
from knowscope.facts import Fact, FactFormatError, Probe, load_facts

TOKYO = Fact(subject="Tokyo", prompt="{} is a city in the country of", target_true="Japan", target_new="France",
             relation_id="P17", case_id=0, paraphrase_prompts=["The city of Tokyo lies in"],
             neighborhood_prompts=["Osaka is a city in the country of", "Kyoto is a city in the country of"],
             relation_specificity=[Probe("Tokyo is home to the landmark", "Tokyo Tower", "landmark"),
                                   Probe("Tokyo has a governor who works in", "Shinjuku", "seat")],
             portability=[("Tokyo is a city on the continent of", "Europe")])
OSAKA = Fact(subject="Osaka", prompt="{} is a city in the country of", target_true="Japan", target_new="Spain",
             relation_id="P17", case_id=1, neighborhood_prompts=["Tokyo is a city in the country of"],
             relation_specificity=[Probe("Osaka is famous for the dish", "takoyaki", "dish")])


def _random_edit(model, scale=0.5, seed=0) -> EditResult:
    g = torch.Generator().manual_seed(seed)
    params = model.named_parameters()
    deltas = {model.arch.mlp_out_name(i): torch.randn(params[model.arch.mlp_out_name(i)].shape, generator=g) * scale
              for i in (0, 1)}
    return EditResult("test", deltas, model.fingerprint, layers=[0, 1])


def _argmax(model, prompt: str, answer: str) -> torch.Tensor:
    """Teacher-forced argmax over the answer's positions, one unpadded forward pass, written plainly."""
    p = model.to_tokens(prompt)[0].tolist()
    t = model.tokenizer.encode(" " + answer, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([p + t]))[0]
    return logits[len(p) - 1 : len(p) - 1 + len(t)].argmax(-1)


def _greedy(model, prompt: str, n: int) -> list[int]:
    """n greedy tokens, one full forward pass per token, no cache, no batch: the plain reference."""
    ids = model.to_tokens(prompt)[0].tolist()
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
            out.append(nxt)
    return out


def test_normalize_and_begins_with():
    assert normalize('  "The Netherlands," he') == 'netherlands," he'
    assert begins_with(" the United States of America", "United States")
    assert begins_with(" ROME.", "Rome") and begins_with(" Rome", " rome")
    assert not begins_with(" Romeo and", "Rome")
    assert not begins_with(" a city", "Rome") and not begins_with(" Rome", "  ")
    assert begins_with(" an apple", "an apple") and begins_with(" apple pie", "the apple")


def test_greedy_from_teacher_forced_scores_equals_a_plain_loop(tiny):
    """Decoding from where the teacher-forced argmax leaves the answer gives plain greedy decoding, whether
    the answer is the greedy text (nothing decoded), diverges at once, or after some tokens."""
    prompt = "Tokyo is a city in"
    ids = tuple(tiny.to_tokens(prompt)[0].tolist())
    greedy = _greedy(tiny, prompt, 6)
    for answer in (greedy[:3], greedy[:1] + [greedy[1] + 1, 5], [greedy[0] + 1, 7, 8]):
        answer = tuple(answer)
        logits = tiny(torch.tensor([list(ids) + list(answer)]))[0]
        argmax = logits[len(ids) - 1 : len(ids) - 1 + len(answer)].argmax(-1).tolist()
        for n in (1, 3, 5):
            got = greedy_from_scores(tiny, [(ids, answer, argmax, n)])
            assert list(got[(ids, n)]) == greedy[:n], (answer, n)


def test_greedy_continuations_equal_a_plain_loop(tiny):
    prompts = ["Tokyo is a city in", "The Eiffel Tower is located in the city of", "Messi"]
    reqs = [(tuple(tiny.to_tokens(p)[0].tolist()), n) for p, n in zip(prompts, (3, 5, 2), strict=True)]
    got = greedy_continuations(tiny, reqs, batch_size=2)
    for p, (ids, n) in zip(prompts, reqs, strict=True):
        assert list(got[(ids, n)]) == _greedy(tiny, p, n)


def test_edited_facts_rule_is_subject_and_relation():
    edits = EditedFacts.of([TOKYO, {"subject": "Kyoto", "prompt": "{} has a famous temple named",
                                    "relation_id": "temple"}])
    # a neighbour naming a subject edited under the same relation: supposed to change
    assert edits.names_edited("Tokyo is a city in the country of", "P17", "{} is a city in the country of")
    # a subject edited under another relation only: kept
    assert not edits.names_edited("Kyoto is a city in the country of", "P17", "{} is a city in the country of")
    assert not edits.names_edited("Tokyoite food", "P17", "")  # not a whole word
    # unknown relation ids compare by template
    legacy = EditedFacts.of([{"subject": "Tokyo", "prompt": "{} is a city in the country of"}])
    assert legacy.names_edited("Tokyo is a city in the country of", "", "{} is a city in the country of")
    assert not legacy.names_edited("Tokyo is a city in the country of", "", "{} has")
    assert edits.is_edited("Tokyo", "P17") and not edits.is_edited("Tokyo", "landmark")


def test_relation_specificity_and_portability_match_plain_references(tiny):
    facts = [TOKYO, OSAKA]
    session = EditSession(tiny)
    before = {(p.prompt, p.answer): _argmax(tiny, p.prompt, p.answer) for f in facts for p in f.relation_specificity}
    try:
        session.apply(_random_edit(tiny))
        m = evaluate(tiny, facts, session=session, fluency=False)
        for fact, row in zip(facts, m.per_fact, strict=True):
            agree = [float((_argmax(tiny, p.prompt, p.answer) == before[(p.prompt, p.answer)]).float().mean())
                     for p in fact.relation_specificity]
            assert row["relation_specificity"] == pytest.approx(sum(agree) / len(agree))
            assert row["n_relation_specificity"] == len(fact.relation_specificity)
        # Tokyo's neighbour "Osaka ..." names Osaka, edited under the same relation: left out; Osaka's
        # neighbour "Tokyo ..." likewise; relation-specificity probes are never left out by name
        assert m.per_fact[0]["n_neighborhood"] == 1 and m.per_fact[0]["n_neighborhood_dropped"] == 1
        assert m.notes["prompts"]["relation_specificity"] == {"kept": 3, "dropped_edited": 0}
        assert m.relation_specificity is not None and m.relation_specificity_score is not None
        assert m.per_fact[1]["portability_acc"] is None and m.per_fact[0]["portability_acc"] is not None
        assert m.per_fact[0]["gen_portability"] in (0.0, 1.0) and m.per_fact[1]["gen_portability"] is None
        # a same-subject second edit (Tokyo's landmark) makes that probe one the edits are meant to change
        second = {"subject": "Tokyo", "prompt": "{} is home to the landmark", "relation_id": "landmark"}
        m2 = evaluate(tiny, facts, session=session, fluency=False, edited=[second])
        assert m2.notes["prompts"]["relation_specificity"] == {"kept": 2, "dropped_edited": 1}
    finally:
        session.rollback()


def test_generation_scores_match_plain_greedy_decoding(tiny):
    fact = TOKYO
    session = EditSession(tiny)
    plain_before = {p: _greedy(tiny, p, len(tiny.encode_target(" " + a)))
                    for p, a in [(q.prompt, q.answer) for q in fact.relation_specificity]
                    + [(q, fact.target_true) for q in fact.neighborhood_prompts]}
    try:
        session.apply(_random_edit(tiny, scale=1.0, seed=3))
        m = evaluate(tiny, [fact], session=session, fluency=False)
        row = m.per_fact[0]
        for item in row["prompts"]:
            follow = item["kind"] in ("rewrite", "paraphrase", "portability")
            n = len(tiny.encode_target(" " + item["answer"])) + (2 if follow else 0)
            after = _greedy(tiny, item["prompt"], n)
            assert item["after"] == tiny.tokenizer.decode(after, skip_special_tokens=True)
            if follow:
                assert item["success"] == begins_with(item["after"], item["answer"])
            else:
                assert item["success"] == (after == plain_before[item["prompt"]])
        rel = [i["success"] for i in row["prompts"] if i["kind"] == "relation_specificity"]
        assert row["gen_relation_specificity"] == pytest.approx(sum(rel) / len(rel))
        assert row["gen_efficacy"] == float(begins_with(row["prompts"][0]["after"], "France"))
    finally:
        session.rollback()


def test_unedited_model_scores_one_on_every_specificity_metric(tiny):
    ref = pre_edit_predictions(tiny, [TOKYO, OSAKA])
    m = evaluate(tiny, [TOKYO, OSAKA], reference=ref, fluency=False)
    for key in ("locality_acc", "relation_specificity", "gen_neighborhood", "gen_locality",
                "gen_relation_specificity"):
        assert getattr(m, key) == 1.0, key


def test_knowedit_relation_specificity_counts_in_relation_specificity_and_locality(tiny, tmp_path):
    record = {
        "subject": "Tokyo", "prompt": "Tokyo is a city in the country of", "target_new": "France",
        "ground_truth": ["Japan"], "rephrase_prompt": "The city of Tokyo lies in",
        "locality": {"Relation_Specificity": [
            {"prompt": "The governor of Tokyo works in", "ground_truth": ["Shinjuku"]},
            {"prompt": "Tokyo is home to the landmark", "ground_truth": ["Tokyo Tower"]}]},
        "portability": {"Reasoning": [{"prompt": "Tokyo is on the continent of", "ground_truth": [["Europe"]]}]},
    }
    path = tmp_path / "knowedit.json"
    path.write_text(json.dumps([record]))
    fact = load_facts(path)[0]
    assert [p.prompt for p in fact.relation_specificity] == ["The governor of Tokyo works in",
                                                             "Tokyo is home to the landmark"]
    assert len(fact.locality) == 2 and fact.portability == [("Tokyo is on the continent of", "Europe")]
    session = EditSession(tiny)
    try:
        session.apply(_random_edit(tiny, seed=1))
        m = evaluate(tiny, [fact], session=session, fluency=False)
        assert m.notes["prompts"]["relation_specificity"] == {"kept": 2, "dropped_edited": 0}
        assert m.notes["prompts"]["locality"] == {"kept": 2, "dropped_edited": 0}  # naming Tokyo drops nothing
        assert m.relation_specificity is not None and m.locality_acc == pytest.approx(m.relation_specificity)
    finally:
        session.rollback()


def test_a_hijacking_memory_entry_is_caught_by_relation_specificity(tiny_llama):
    """A hand-built GRACE entry keyed on the subject's last token answers for every prompt that opens with
    the subject: the edited fact moves, and so do the subject's other relations; other subjects do not."""
    model, fact, layer = tiny_llama, TOKYO, 1
    span = model.subject_span(fact.prompt, fact.subject)
    key = value_inputs(model, layer, [fact.text])[0][span[1] - 1]
    value = torch.randn(model.arch.d_model, generator=torch.Generator().manual_seed(0)) * 50
    entry = EditResult("grace", {}, model.fingerprint, layers=[layer], requests=facts_meta([fact]),
                       extra={"memory": {"kind": KIND, "layer": layer, "spec": _spec(model)}},
                       memory={"rows": torch.tensor([0]), "keys": key[None].float(), "values": value[None],
                               "radii": torch.tensor([1e-3]), "labels": torch.tensor([label_of([1])])})
    ref = pre_edit_predictions(model, [fact])
    session = EditSession(model)
    try:
        session.apply(entry)
        m = evaluate(model, [fact], reference=ref, fluency=False)
        routes = m.per_fact[0]["routing"]["relation_specificity"]
        assert all(r["routed"] for r in routes)  # the subject's other relations reach the entry
        assert not any(r["routed"] for r in m.per_fact[0]["routing"]["neighborhood"])
        assert m.relation_specificity < 1.0 and m.gen_relation_specificity < 1.0
        assert m.locality_acc == 1.0 and m.gen_neighborhood == 1.0
    finally:
        session.rollback()
    assert memory_of(model) is None


@pytest.mark.parametrize("bad, message", [
    ({"relation_specificity": [{"prompt": "Tokyo is home to"}]}, r"record 0\.relation_specificity\[0\]"),
    ({"relation_specificity": [{"prompt": "Tokyo is home to", "ground_truth": ""}]},
     r"record 0\.relation_specificity\[0\]: needs a non-empty string 'ground_truth'"),
    ({"portability": [{"prompt": "Tokyo is on", "ground_truth": "  "}]}, r"record 0\.portability\[0\]"),
    ({"portability": [{"prompt": "Tokyo is on"}]}, r"record 0\.portability\[0\]"),
])
def test_probe_records_without_an_answer_are_refused_by_name(bad, message, tmp_path):
    record = {**TOKYO.to_counterfact(), **bad}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(FactFormatError, match=message) as err:
        load_facts(path)
    assert "\n" not in str(err.value)
    with pytest.raises(FactFormatError, match="non-empty prompt and answer"):
        Fact("Tokyo", "{} is", "Japan", "France", relation_specificity=[("Tokyo is home to", "")])


def test_kinds_without_prompts_are_absent_not_one(tiny):
    bare = Fact(subject="Tokyo", prompt="{} is a city in the country of", target_true="Japan", target_new="France")
    m = evaluate(tiny, [bare], reference=pre_edit_predictions(tiny, [bare]), fluency=False)
    for key in ("paraphrase_score", "neighborhood_score", "locality_acc", "relation_specificity",
                "relation_specificity_score", "portability_acc", "gen_paraphrase", "gen_neighborhood",
                "gen_relation_specificity", "gen_portability"):
        assert getattr(m, key) is None, key
    assert m.gen_efficacy is not None
    back = EditMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.flat() == m.flat() and back.relation_specificity is None
