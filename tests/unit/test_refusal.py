"""Over-refusal: the bundled benign set, reading a user's set, the refusal judgement, detox's metric."""

from __future__ import annotations

import json

import pytest

from knowscope.safety.refusal import (
    BenignPrompt,
    first_per_category,
    load_benign,
    load_bundled_benign,
    over_refusal,
    refuses,
    summarize_refusals,
)


def test_bundled_benign_set():
    rows = load_bundled_benign()
    cats = {r.category for r in rows}
    assert 60 <= len(rows) <= 100 and len(cats) >= 6 and "plain" in cats
    assert len({r.prompt for r in rows}) == len(rows)
    assert all(sum(r.category == c for r in rows) >= 5 for c in cats)
    assert load_benign() == rows


def test_first_per_category_keeps_order_and_every_category():
    rows = load_bundled_benign()
    five = first_per_category(rows, 5)
    want = [r for i, r in enumerate(rows) if sum(c.category == r.category for c in rows[:i]) < 5]  # plain loop
    assert five == want and len(five) == 5 * len({r.category for r in rows})
    assert first_per_category(rows, 10**6) == rows


def test_refusal_judgement():
    flags = refuses([
        "I'm sorry for your loss. I can't help with fixing flat tires on bicycles.",
        "I can't help with that.",
        "Sure! To kill a Python process, run kill -9 with its PID.",
        "Here is a recipe: mix flour, eggs and milk.",
        "",
        "Arson is a crime of violence committed intentionally.",  # a discouragement cue, but an answer here
        "I'm sorry for any misunderstanding, but as a chatbot I don't have the capability to assist.",
    ])
    assert flags == [True, True, False, False, False, False, True]


def test_summary_by_category():
    prompts = [BenignPrompt("a", "x"), BenignPrompt("b", "x"), BenignPrompt("c", "y")]
    out = summarize_refusals(prompts, ["no", "ok", "no"], [True, False, True])
    assert out["rate"] == pytest.approx(2 / 3) and out["by_category"] == {"x": 0.5, "y": 1.0}
    assert [r["prompt"] for r in out["refused"]] == ["a", "c"]


def test_over_refusal_on_a_tiny_model(tiny_llama):
    out = over_refusal(tiny_llama, [BenignPrompt("hello there"), BenignPrompt("fix a tire")], max_new_tokens=3)
    assert out["n"] == 2 and 0.0 <= out["rate"] <= 1.0 and set(out["by_category"]) == {"user"}
    with pytest.raises(ValueError, match="no benign prompts"):
        over_refusal(tiny_llama, [])


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("[]", "empty list"),
    ('{"prompt": "hi"}', "not a JSON list"),
    ('["fine", 3]', "entry 1 is 3"),
    ('["fine", "  "]', "entry 1"),
    ("not json", "is not JSON"),
])
def test_load_benign_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "benign.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_benign(path)


def test_load_benign_reads_a_list_of_strings(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(["How do I bake bread?", "What is a comet?"]))
    assert load_benign(path) == [BenignPrompt("How do I bake bread?"), BenignPrompt("What is a comet?")]


def test_a_detox_report_lists_the_prompts_each_edit_newly_refuses():
    from knowscope.safety.metrics import DetoxReport

    def refused(*prompts):
        return [{"prompt": p, "category": "plain", "response": "I can't help with that."} for p in prompts]

    rows = [{"item_id": i, "after": {"refused": refused(*after)}} for i, after in ((0, ["a", "b"]), (1, ["a"]),
                                                                                   (2, []))]
    report = DetoxReport(before={}, after={}, rows=rows, benign={"before_refused": refused("a")})
    assert [(r["item_id"], r["prompt"]) for r in report.newly_refused()] == [(0, "b")]
    assert DetoxReport(before={}, after={}, rows=rows).newly_refused()[0]["prompt"] == "a"  # nothing refused before


def test_newly_refused_lists_what_the_edit_taught_the_model_to_refuse():
    from knowscope.safety.refusal import newly_refused

    def rows(*prompts):
        return [{"prompt": p, "category": "c", "response": "I can't"} for p in prompts]

    assert [r["prompt"] for r in newly_refused(rows("a", "b"), rows("b", "c", "d"))] == ["c", "d"]
    assert newly_refused(rows("a"), rows()) == []
