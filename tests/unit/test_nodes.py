"""One node of a circuit up close, against plain references: the promoted-token reading equals the
direct logit attribution, the pattern is the hooked attention pattern, facts round-trip from a save;
a trace's own summary and located layer equal what ``aggregate`` / ``locate`` give."""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits import Circuit, aggregate, knowledge_circuit, locate, node_logit_attribution, trace
from knowscope.circuits.batches import make_batch
from knowscope.circuits.nodes import circuit_facts, node_detail
from knowscope.facts import Fact

FACTS = [
    Fact(subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome", relation_id="P36"),
    Fact(subject="Italy", prompt="The capital of {} is", target_true="Rome", target_new="Paris", relation_id="P36"),
]


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    batch = make_batch(tiny_llama, FACTS, "noise", scale=1.0)
    c = knowledge_circuit(tiny_llama, batch, method="eap", top_n=40)
    path = c.save(tmp_path_factory.mktemp("c") / "circuit")
    return Circuit.load(path)


def test_circuit_facts_round_trip(saved):
    def key(facts):
        return [(f.subject, f.prompt, f.target_true) for f in facts]

    assert key(circuit_facts(saved)) == key(FACTS)


def test_node_detail_matches_plain_readings(tiny_llama, saved):
    model = tiny_llama
    heads = [n for n in saved.nodes() if n.startswith("a")]
    mlps = [n for n in saved.nodes() if n.startswith("m")]
    assert heads and mlps
    batch = make_batch(model, circuit_facts(saved), "noise", scale=0.0)
    dla = node_logit_attribution(model, saved.graph, batch)  # [batch, node]
    answer = model.tokenizer.decode([int(batch.answer[1])])
    for node in (heads[0], mlps[0]):
        d = node_detail(model, saved, node, example=1, k=model.arch.d_vocab)
        u = saved.graph.node_index(node)
        # the promoted-token reading at the answer is the node's direct logit attribution to it
        value = dict(d.promotes)[answer] if answer in dict(d.promotes) else None
        assert value == pytest.approx(float(dla[1, u]), abs=1e-4)
        assert d.role is not None and d.role.node == node
        assert all(e["source"] == node for e in d.edges_out)
    d = node_detail(model, saved, heads[0], example=0)
    layer, head = int(heads[0][1:].split(".h")[0]), int(heads[0].split(".h")[1])
    _, cache = model.bridge.run_with_cache(model.to_tokens(FACTS[0].text))
    torch.testing.assert_close(d.pattern, cache[f"blocks.{layer}.attn.hook_pattern"][0, head].float().cpu())
    assert d.pattern_figure() is not None and d.promotes_figure() is not None
    with pytest.raises(ValueError, match="unknown node"):
        node_detail(model, saved, "a99.h0")
    with pytest.raises(ValueError, match="head or an MLP"):
        node_detail(model, saved, "input")


def test_trace_summary_and_located_layer(tiny_llama):
    fact = FACTS[0]
    tr = trace(tiny_llama, fact.text, fact.subject, target=fact.true_continuation, samples=2)
    agg = aggregate([tr])
    assert tr.located_layer("mlp") == locate(tiny_llama, agg, kind="mlp").layer
    rows = tr.class_summary()
    assert {r["kind"] for r in rows} == set(tr.kinds)
    for r in rows:
        eff = agg.effect(r["kind"], r["token_class"])
        assert r["peak_effect"] == pytest.approx(float(eff.max())) and eff[r["peak_layer"]] == eff.max()
