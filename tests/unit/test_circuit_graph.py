"""The circuit graph: edge counts, index layout, pruning and the Circuit object (tiny models)."""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits.circuit import Circuit
from knowscope.circuits.graph import Graph, count_edges
from knowscope.circuits.pruning import (
    greedy_edges,
    prune,
    prune_dangling,
    threshold_edges,
    top_n_edges,
)


def _edges_by_enumeration(n_layers: int, n_heads: int, n_kv: int) -> int:
    """Count edges by listing them: every (writer, reader) pair with the writer earlier in the pass."""
    writers = [("input", -1, 0)]  # (name, layer, order within layer: 0 = attention, 1 = mlp)
    for layer in range(n_layers):
        writers += [("head", layer, 0)] * n_heads + [("mlp", layer, 1)]
    readers = []
    for layer in range(n_layers):
        readers += [(layer, 0)] * (n_heads + 2 * n_kv) + [(layer, 1)]
    readers.append((n_layers, 0))
    count = 0
    for _, wl, wo in writers:
        for rl, ro in readers:
            if wl < rl or (wl == rl and wo < ro):
                count += 1
    return count


@pytest.mark.parametrize("dims", [(4, 4, 4), (12, 12, 12), (4, 4, 2), (30, 9, 3), (3, 6, 1)])
def test_edge_count_matches_formula(dims):
    g = Graph(*dims)
    assert g.n_edges == _edges_by_enumeration(*dims) == count_edges(*dims) == int(g.edge_mask.sum())


def test_gpt2_small_and_default_model_counts():
    # GPT-2 small's EAP-IG graph (q, k, v per head) has 32491 edges
    assert Graph(12, 12, 12).n_edges == 32491
    # the default model: 30 layers, 9 query heads sharing 3 KV heads
    assert Graph(30, 9, 3).n_edges == 70651


def test_graph_matches_tiny_models(tiny_gpt2, tiny_llama):
    g2, gl = Graph.from_model(tiny_gpt2), Graph.from_model(tiny_llama)
    assert (g2.n_heads, g2.n_kv_heads) == (4, 4)
    assert (gl.n_heads, gl.n_kv_heads) == (4, 2)
    assert g2.n_edges == _edges_by_enumeration(4, 4, 4)
    assert gl.n_edges == _edges_by_enumeration(4, 4, 2)
    # the k/v slot count matches the bridge's per-KV-head inputs
    from knowscope.circuits.eap import edge_mode

    with edge_mode(tiny_llama):
        _, cache = tiny_llama.bridge.run_with_cache(tiny_llama.to_tokens("The capital of France"))
    assert cache["blocks.0.hook_k_input"].shape[2] == gl.n_kv_heads
    assert cache["blocks.0.hook_q_input"].shape[2] == gl.n_heads
    assert not tiny_llama.bridge.cfg.use_split_qkv_input  # restored


def test_names_and_ownership():
    g = Graph(2, 4, 2)
    assert g.node_names[g.head_node(1, 3)] == "a1.h3"
    assert g.slot_names[g.k_slot(1, 1)] == "a1.g1<k>"
    assert g.slot_names[g.mlp_slot(0)] == "m0"
    assert g.slot_names[g.logits_slot] == "logits"
    # KV slot of group 1 is owned by query heads 2 and 3
    owners = g.slot_owner[g.v_slot(0, 1)].nonzero().flatten().tolist()
    assert owners == [g.head_node(0, 2), g.head_node(0, 3)]
    # a head of layer 0 feeds the MLP of layer 0 but not the heads of layer 0
    assert g.edge_mask[g.head_node(0, 1), g.mlp_slot(0)]
    assert not g.edge_mask[g.head_node(0, 1), g.q_slot(0, 0)]
    assert not g.edge_mask[g.mlp_node(0), g.mlp_slot(0)]
    assert g.edge_mask[g.mlp_node(0), g.q_slot(1, 0)]
    assert g.node_index("m1") == g.mlp_node(1) and g.slot_index("a0.h2<q>") == g.q_slot(0, 2)
    with pytest.raises(ValueError, match="unknown node"):
        g.node_index("b3")
    with pytest.raises(ValueError, match="multiple"):
        Graph(2, 4, 3)


def _random_scores(g: Graph, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(g.n_forward, g.n_slots, generator=gen) * g.edge_mask


def test_top_n_and_threshold():
    g = Graph(3, 4, 2)
    s = _random_scores(g)
    m = top_n_edges(g, s, 25)
    assert int(m.sum()) == 25 and not bool((m & ~g.edge_mask).any())
    kept = s.abs()[m]
    dropped = s.abs()[g.edge_mask & ~m]
    assert float(kept.min()) >= float(dropped.max())
    t = threshold_edges(g, s, float(kept.min()))
    assert torch.equal(t, m)
    with pytest.raises(ValueError, match="out of range"):
        top_n_edges(g, s, g.n_edges + 1)


def _paths_reference(g: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Edges on an input->logits path, by explicit graph search over node->node edges."""
    import networkx as nx

    dg = nx.MultiDiGraph()  # one node->node edge per slot (a head reads q, k and v)
    for u, v in mask.nonzero().tolist():
        owners = ["logits"] if v == g.logits_slot else g.slot_owner[v].nonzero().flatten().tolist()
        for w in owners:
            dg.add_edge(u, w, slot=v)
    keep = torch.zeros_like(mask)
    if 0 not in dg or "logits" not in dg:
        return keep
    from_in = nx.descendants(dg, 0) | {0}
    to_out = nx.ancestors(dg, "logits") | {"logits"}
    for u, w, d in dg.edges(data=True):
        if u in from_in and w in to_out:
            keep[u, d["slot"]] = True
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_prune_dangling_matches_path_search(seed):
    g = Graph(3, 4, 2)
    s = _random_scores(g, seed)
    raw = top_n_edges(g, s, 40)
    assert torch.equal(prune_dangling(g, raw), _paths_reference(g, raw))


def test_greedy_grows_from_logits():
    g = Graph(3, 4, 2)
    s = _random_scores(g, 1)
    m = greedy_edges(g, s, 15)
    assert int(m.sum()) == 15
    # the first edge is the best edge into the logits
    first = int(s[:, g.logits_slot].abs().argmax())
    assert m[first, g.logits_slot]
    # every chosen edge enters the logits or a node that has an outgoing chosen edge
    out_nodes = m.any(dim=1)
    for _u, v in m.nonzero().tolist():
        assert v == g.logits_slot or bool((g.slot_owner[v] & out_nodes).any())
    with pytest.raises(ValueError, match="exactly one"):
        prune(g, s, top_n=3, greedy=3)


def test_circuit_save_load_networkx_figure(tmp_path):
    g = Graph(3, 4, 2)
    s = _random_scores(g, 2)
    mask = prune(g, s, top_n=30)
    c = Circuit(graph=g, scores=s, mask=mask, metric_clean=2.0, metric_corrupted=-1.0, metric_circuit=1.5,
                faithfulness=2.5 / 3, curve={"fraction": [0.1, 1.0], "faithfulness": [0.5, 1.0]},
                node_dla=torch.randn(2, g.n_forward), meta={"method": "eap"})
    c.save(tmp_path / "c")
    d = Circuit.load(tmp_path / "c")
    assert torch.equal(d.mask, c.mask) and torch.allclose(d.scores, c.scores)
    assert d.faithfulness == c.faithfulness and d.meta == c.meta and d.graph == g
    assert torch.allclose(d.node_dla, c.node_dla)
    dg = c.to_networkx()
    assert set(dg.nodes) == set(c.nodes())
    assert dg.number_of_edges() >= 1
    fig = c.figure()
    assert fig.layout.title.text.startswith(f"{c.n_edges} of {c.n_edges} circuit edges drawn ({g.n_edges} edges")
    kinds = {t.name for t in fig.data}
    assert "nodes" in kinds
    assert len(c.curve_figure().data) == 1
    info = c.to_dict()
    assert info["n_edges_circuit"] == c.n_edges and info["n_edges_total"] == g.n_edges
    assert len(info["edges"]) == c.n_edges
    from knowscope.results import ResultFormatError

    with pytest.raises(ResultFormatError):
        Circuit.load(tmp_path / "nothing")


def _random_circuit(n_edges: int, graph=None, seed: int = 0):
    g = graph or Graph(n_layers=6, n_heads=4, n_kv_heads=2)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(g.n_forward, g.n_slots, generator=gen) * g.edge_mask
    return Circuit(graph=g, scores=scores, mask=prune(g, scores, top_n=n_edges), faithfulness=0.5,
                   meta={"model": "m", "method": "eap", "batch": {"prompts": ["p"], "corruption": "swap"}})


def test_graph_figure_draws_every_edge_in_a_few_traces_with_node_cards():
    c = _random_circuit(400)
    n = c.n_edges
    assert n > 100
    fig = c.figure()
    lines = [t for t in fig.data if t.mode == "lines"]
    assert 2 <= len(lines) <= 8  # binned by sign and weight, not one trace per edge
    segments = sum(sum(1 for x in t.x if x != x) for t in lines)
    assert segments == n
    assert fig.layout.title.text.startswith(f"{n} of {n} circuit edges drawn")
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert set(nodes.customdata) == set(c.nodes())
    card = dict(zip(nodes.customdata, nodes.hovertext, strict=True))["logits"]
    assert "score" in card and "in  ←" in card
    # the strongest edge into the logits is on its card
    col = c.scores[:, c.graph.logits_slot] * c.mask[:, c.graph.logits_slot]
    assert c.graph.node_names[int(col.abs().argmax())] in card.split("in  ← ")[1]
    few = c.figure(max_edges=40, pinned="m3")
    assert few.layout.title.text.startswith(f"40 of {n} circuit edges drawn")
    binned = [t for t in few.data if t.mode == "lines" and t.name != "edges of m3"]
    assert sum(sum(1 for x in t.x if x != x) for t in binned) == 40
    assert any(t.name == "edges of m3" for t in few.data)


def test_graph_json_follows_its_schema():
    import json

    from knowscope.circuits.graphview import SCHEMA, SCHEMA_VERSION

    c = _random_circuit(200)
    d = json.loads(json.dumps(c.to_graph_json()))  # plain JSON
    assert d["schema"] == SCHEMA and d["version"] == SCHEMA_VERSION
    assert d["metadata"]["n_edges"] == c.n_edges == len(d["edges"]) > 0
    assert d["metadata"]["n_edges_model"] == c.graph.n_edges
    ids = {n["id"] for n in d["nodes"]}
    assert ids == set(c.nodes())
    for e in d["edges"]:
        assert e["source"] in ids and e["input"] in ("q", "k", "v", "mlp", "logits")
        u, v = c.graph.node_index(e["source"]), c.graph.slot_index(e["slot"])
        assert abs(e["score"] - float(c.scores[u, v])) < 1e-6 and bool(c.mask[u, v])
        assert len(e["targets"]) == (c.graph.group_size if e["input"] in ("k", "v") else 1)
    scores = [abs(e["score"]) for e in d["edges"]]
    assert scores == sorted(scores, reverse=True)
