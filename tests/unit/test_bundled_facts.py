"""Structural checks of the bundled fact set (knowscope/data/facts.json); no model needed.

Whether the default model knows these facts is checked by the integration tests and by
``python scripts/build_facts.py --check``; here we check that every record is a complete
CounterFact-style case that tracing and editing can use as is.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from knowscope.facts import BUNDLED_SETS, Fact, load_bundled_facts, relations


@pytest.fixture(scope="module", params=["default", "extended", "extra"])
def facts(request) -> list[Fact]:
    return load_bundled_facts(name=request.param)


@pytest.mark.parametrize("name", ["default", "extended"])
def test_size_and_relations(name):
    facts = load_bundled_facts(name=name)
    assert len(facts) >= 150
    counts = relations(facts)
    assert len(counts) >= 8, counts
    assert all(rel for rel in counts), "every fact needs a relation_id"
    # no relation swamps the set
    assert max(counts.values()) <= 0.25 * len(facts), counts


@pytest.mark.parametrize("name", sorted(BUNDLED_SETS))
def test_file_is_counterfact_format(name):
    records = json.loads(resources.files("knowscope.data").joinpath(BUNDLED_SETS[name]).read_text(encoding="utf-8"))
    assert isinstance(records, list) and records
    for record in records:
        rewrite = record["requested_rewrite"]
        assert set(rewrite) >= {"prompt", "relation_id", "subject", "target_true", "target_new"}
        assert isinstance(rewrite["target_true"]["str"], str)
        assert isinstance(rewrite["target_new"]["str"], str)
    # round trip: the records are exactly what Fact.to_counterfact writes
    assert [f.to_counterfact() for f in load_bundled_facts(name=name)] == records


def test_case_ids_unique_ints(facts):
    ids = [f.case_id for f in facts]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == len(ids)


def test_prompts_and_targets(facts):
    for f in facts:
        assert f.prompt.count("{}") == 1, f.prompt
        assert f.subject in f.text
        assert f.target_true.strip() == f.target_true and f.target_new.strip() == f.target_new
        assert f.target_new != f.target_true
        assert f.target_new.split()[0] != f.target_true.split()[0], (f.case_id, f.target_new, f.target_true)
        assert f.target_true.lower() not in f.text.lower(), f"answer leaked into prompt of case {f.case_id}"


def test_relation_consistency(facts):
    """One template per relation, several objects per relation, no subject twice in a relation."""
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation_id, []).append(f)
    for rel, group in by_rel.items():
        assert len({f.prompt for f in group}) == 1, rel
        objects = {f.target_true for f in group}
        assert len(objects) >= 2, rel
        # no duplicate subjects within a relation
        subjects = Counter(f.subject for f in group)
        assert max(subjects.values()) == 1, [s for s, c in subjects.items() if c > 1]


def test_paraphrases(facts):
    for f in facts:
        assert len(f.paraphrase_prompts) >= 2, f.case_id
        assert len(set(f.paraphrase_prompts)) == len(f.paraphrase_prompts)
        for p in f.paraphrase_prompts:
            assert f.subject in p, (f.case_id, p)
            assert p != f.text
            assert f.target_true.lower() not in p.lower()


def test_neighborhood_prompts(facts):
    """At least 5 prompts per fact about other subjects with the same relation and true object."""
    known = {(f.relation_id, f.text): f.target_true for f in facts}
    for f in facts:
        assert len(f.neighborhood_prompts) >= 5, f.case_id
        assert len(set(f.neighborhood_prompts)) == len(f.neighborhood_prompts)
        for p in f.neighborhood_prompts:
            assert f.subject not in p, (f.case_id, p)
            assert p != f.text
            assert f.target_true.lower() not in p.lower()
            # a neighbour that is itself a bundled fact must have the same true object
            if (f.relation_id, p) in known:
                assert known[(f.relation_id, p)] == f.target_true


def test_generation_prompts(facts):
    for f in facts:
        assert 1 <= len(f.generation_prompts) <= 3, f.case_id
        assert all(f.subject in p for p in f.generation_prompts)


def test_the_extended_set():
    ext, default = load_bundled_facts(name="extended"), load_bundled_facts()
    assert len(ext) >= 650 and len(relations(ext)) >= 15
    subjects = [f.subject for f in ext]
    assert len(set(subjects)) == len(subjects)  # unique: a sequential run's edited subjects stay distinct
    assert len(default) == 214
    with pytest.raises(ValueError, match="unknown bundled fact set"):
        load_bundled_facts(name="huge")


def test_the_extra_set_holds_only_new_subjects():
    """The extra set (more edits for lifelong runs) never repeats a subject of the extended or same-subject set,
    nor one of its own."""
    extra = load_bundled_facts(name="extra")
    assert len(extra) >= 200 and len(relations(extra)) >= 4
    subjects = [f.subject for f in extra]
    assert len(set(subjects)) == len(subjects)
    others = {f.subject for name in ("extended", "same_subject") for f in load_bundled_facts(name=name)}
    assert not set(subjects) & others


def test_relation_filter():
    facts = load_bundled_facts()
    rel = facts[0].relation_id
    subset = load_bundled_facts(relation=rel)
    assert subset and all(f.relation_id == rel for f in subset)
    with pytest.raises(ValueError, match="no bundled facts with relation"):
        load_bundled_facts(relation="no-such-relation")


@pytest.mark.parametrize("name, coverage", [("default", 0.54), ("extended", 0.44)])
def test_relation_specificity_and_portability_probes(name, coverage):
    """The probes scripts/build_probes.py adds: the subject under other relations (never the fact's own
    relation, never its own answer), one-hop portability prompts for the relations with a chain. Coverage
    is what the default model's knowledge allows (docs/findings.md), held here so a rebuild cannot lose it."""
    facts = load_bundled_facts(name=name)
    with_probes = [f for f in facts if f.relation_specificity]
    assert len(with_probes) / len(facts) >= coverage
    for f in with_probes:
        assert len(f.relation_specificity) <= 3
        for probe in f.relation_specificity:
            assert f.subject in probe.prompt and probe.prompt not in (f.text, *f.paraphrase_prompts)
            assert probe.relation_id and probe.relation_id != f.relation_id
            assert probe.answer.strip() and probe.answer != f.target_true
    chained = {f.relation_id for f in facts if f.portability}
    assert {"P17", "P276"} <= chained
    for f in facts:
        for prompt, answer in f.portability:
            assert f.subject in prompt and answer.strip()


def test_the_same_subject_set():
    facts = load_bundled_facts(name="same_subject")
    by_subject: dict[str, list] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    assert len(by_subject) >= 100 and all(2 <= len(v) <= 3 for v in by_subject.values())
    for group in by_subject.values():
        assert len({f.relation_id for f in group}) == len(group)  # one edit per relation of a subject
    # every subject's first edit comes before any subject's second edit
    seen: set[str] = set()
    order = []
    for f in facts:
        order.append(f.subject in seen)
        seen.add(f.subject)
    assert order == sorted(order)
    assert len({f.case_id for f in facts}) == len(facts)
