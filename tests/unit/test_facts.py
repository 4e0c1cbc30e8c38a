"""Fact records: CounterFact round trip, EasyEdit / KnowEdit and zsRE readers, clear errors."""

from __future__ import annotations

import json

import pytest

from knowscope.facts import Fact, FactFormatError, load_facts, parse_facts, save_facts

COUNTERFACT = {
    "case_id": 0,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Shayna does this and Yossel goes still. Danielle Darrieux is a native speaker of"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
    "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}

EASYEDIT = {
    "subject": "Ray Charles",
    "prompt": "Ray Charles plays the instrument",
    "target_new": "violin",
    "ground_truth": ["piano"],
    "rephrase_prompt": "The instrument Ray Charles plays is",
    "locality": {"Relation_Specificity": [{"prompt": "Miles Davis plays the", "ground_truth": ["trumpet"]}]},
    "portability": {"Subject_Aliasing": [{"prompt": "The Genius plays the instrument", "ground_truth": "violin"}]},
}

ZSRE = {
    "subject": "Watts Humphrey",
    "src": "What university did Watts Humphrey attend?",
    "pred": "Trinity College",
    "rephrase": "What university did Watts Humphrey take part in?",
    "alt": "University of Michigan",
    "answers": ["Illinois Institute of Technology"],
    "loc": "nq question: who played desmond doss father in hacksaw ridge",
    "loc_ans": "Hugo Weaving",
    "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?",
}


def test_counterfact_round_trip(tmp_path):
    (fact,) = parse_facts([COUNTERFACT])
    assert fact.subject == "Danielle Darrieux"
    assert fact.text == "The mother tongue of Danielle Darrieux is"
    assert (fact.target_true, fact.target_new, fact.relation_id) == ("French", "English", "P103")
    assert fact.new_continuation == " English"
    path = save_facts([fact], tmp_path / "f.json")
    (again,) = load_facts(path)
    assert again == fact
    record = json.loads(path.read_text())[0]
    assert record["requested_rewrite"]["target_new"]["str"] == "English"


def test_easyedit_reader():
    (fact,) = parse_facts([EASYEDIT])
    assert fact.prompt == "{} plays the instrument"
    assert fact.target_true == "piano" and fact.target_new == "violin"
    assert fact.paraphrase_prompts == ["The instrument Ray Charles plays is"]
    assert fact.locality == [("Miles Davis plays the", "trumpet")]
    assert fact.portability == [("The Genius plays the instrument", "violin")]


def test_zsre_reader():
    (fact,) = parse_facts([ZSRE])
    assert fact.prompt == "What university did {} attend?"
    assert fact.target_true == "Illinois Institute of Technology"
    assert fact.target_new == "University of Michigan"
    assert fact.locality == [("who played desmond doss father in hacksaw ridge", "Hugo Weaving")]


def test_formats_are_detected_per_record(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([COUNTERFACT, EASYEDIT, ZSRE]))
    assert [f.subject for f in load_facts(path)] == ["Danielle Darrieux", "Ray Charles", "Watts Humphrey"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["requested_rewrite"].pop("subject"), r"record 1\.requested_rewrite: missing field 'subject'"),
        (lambda r: r["requested_rewrite"].update(prompt="no slot"), r"record 1: .*has no '\{\}'"),
        (lambda r: r["requested_rewrite"]["target_new"].update(str=""), r"record 1: .*target_new"),
        (lambda r: r.update(paraphrase_prompts="oops"), r"record 1: field 'paraphrase_prompts'"),
    ],
)
def test_malformed_records_name_record_and_field(mutate, message):
    bad = json.loads(json.dumps(COUNTERFACT))
    mutate(bad)
    with pytest.raises(FactFormatError, match=message):
        parse_facts([COUNTERFACT, bad])


def test_unknown_format_and_bad_files(tmp_path):
    with pytest.raises(FactFormatError, match="record 0: unknown format"):
        parse_facts([{"question": "?"}])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FactFormatError, match="not valid JSON"):
        load_facts(bad)
    with pytest.raises(FileNotFoundError):
        load_facts(tmp_path / "missing.json")


def test_subject_not_in_prompt_is_an_error():
    bad = dict(EASYEDIT, prompt="Someone plays the instrument")
    with pytest.raises(FactFormatError, match="does not occur in prompt"):
        parse_facts([bad])


def test_fact_validates_itself():
    with pytest.raises(FactFormatError, match="exactly one"):
        Fact(subject="X", prompt="no slot", target_true="a", target_new="b")
