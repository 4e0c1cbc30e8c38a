"""Knowledge circuits on the real default model (SmolLM2-135M, GQA): faithfulness and roles.

One EAP-IG run (5 steps) on three facts of the bundled relation P37 ("The official language of
{} is" -> Spanish), corrupted by swapping in subjects of the same relation with other answers;
the circuit is checked by exact edge patching.
"""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits.batches import make_batch
from knowscope.circuits.circuit import knowledge_circuit
from knowscope.circuits.graph import Graph
from knowscope.circuits.roles import head_roles
from knowscope.facts import load_bundled_facts

RELATION = "P37"
FRACTIONS = (0.005, 0.02, 0.05)


@pytest.fixture(scope="module")
def p37(default_model):
    facts = load_bundled_facts(relation=RELATION, limit=3)
    batch = make_batch(default_model, facts, "swap", seed=0)
    n = Graph.from_model(default_model).n_edges
    circuit = knowledge_circuit(default_model, batch, method="eap-ig", ig_steps=5, target_faithfulness=0.8,
                                sizes=[int(f * n) for f in FRACTIONS])
    return batch, circuit


def test_graph_of_default_model(default_model):
    g = Graph.from_model(default_model)
    assert (g.n_layers, g.n_heads, g.n_kv_heads) == (30, 9, 3)
    assert g.n_edges == 70651


def test_small_eap_ig_circuit_is_faithful(p37):
    batch, c = p37
    # the corruption flips the answer: clean prefers the object, corrupted the contrast
    assert c.metric_clean > 2.0 and c.metric_corrupted < 0.0
    assert all(s != t for s, t in zip(batch.prompts, batch.corrupted_prompts, strict=True))
    # a circuit with at most 5% of the edges reaches normalised faithfulness 0.8
    assert c.faithfulness >= 0.8
    assert c.n_edges <= 0.05 * c.n_edges_total
    curve = dict(zip(c.curve["fraction"], c.curve["faithfulness"], strict=True))
    assert max(f for frac, f in curve.items() if frac <= 0.05) >= 0.8
    assert "input" in c.nodes() and "logits" in c.nodes()


def test_scores_single_out_few_edges(p37):
    _, c = p37
    s = c.scores[c.graph.edge_mask].abs()
    top = s.topk(int(0.01 * s.numel())).values.sum()
    assert float(top / s.sum()) > 0.3  # 1% of the edges carry over 30% of the attribution mass


def test_roles_find_object_writers(default_model, p37):
    batch, c = p37
    report = head_roles(default_model, c, batch)
    writers = report.by_role("mover") + report.by_role("object_writer")
    assert writers, report.to_dict()
    # the object writers' direct logit attribution to the answer is positive by construction of the rule,
    # and together they write a sizeable part of the answer's logit
    assert sum(r.evidence["object_dla"] for r in writers) > 1.0
    assert torch.isfinite(c.node_dla).all()
