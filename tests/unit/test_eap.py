"""EAP / EAP-IG exactness on tiny models, against plain slow references written here.

* every slot's input is the sum of its upstream nodes' outputs (plus input-independent biases);
* one-pass edge patching equals a plain multi-pass fixed-point reference that *sets* every slot's
  input from recorded outputs;
* EAP scores equal the derivative of the exactly patched metric along the edge (central
  finite differences); EAP-IG with one step equals EAP; EAP-IG's input-node edges satisfy
  completeness (they sum to metric(corrupted) - metric(clean)) as the step count grows.
"""

from __future__ import annotations

import json

import pytest
import torch

from knowscope.circuits import eap
from knowscope.circuits.batches import as_template, make_batch, metric_values, noise_scale
from knowscope.circuits.circuit import Circuit, knowledge_circuit, node_logit_attribution
from knowscope.circuits.diff import CircuitDiff, circuit_diff
from knowscope.circuits.graph import Graph
from knowscope.circuits.pruning import prune
from knowscope.circuits.roles import head_roles
from knowscope.facts import Fact

PROMPT = "The capital of {} is"


def _facts() -> list[Fact]:
    return [
        Fact(subject="France", prompt=PROMPT, target_true="Paris", target_new="Rome", relation_id="P36"),
        Fact(subject="Italy", prompt=PROMPT, target_true="Rome", target_new="Paris", relation_id="P36"),
        Fact(subject="Japan", prompt="Tokyo is the capital of {}. The capital of {}".replace(". The capital of {}", "")
             + " is", target_true="Tokyo", target_new="Paris", relation_id="P36"),
    ]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request):
    from knowscope.models import tiny_model

    model = tiny_model(request.param)
    scale = noise_scale(model, _facts())  # 3 x the std of the subjects' embeddings, as in ROME
    batch = make_batch(model, _facts(), "noise", scale=scale, seed=0)
    return model, Graph.from_model(model), batch


# --------------------------------------------------------------------------------------------
# the sum decomposition


def _slot_inputs(model, graph, tokens):
    """Every slot's input on a clean run, read plainly from the bridge's hooks."""
    names = ["ln_final.hook_in"]
    for layer in range(graph.n_layers):
        names += [f"blocks.{layer}.hook_q_input", f"blocks.{layer}.hook_k_input", f"blocks.{layer}.hook_v_input",
                  f"blocks.{layer}.hook_resid_mid"]
    with eap.edge_mode(model):
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    out = torch.zeros(tokens.shape[0], tokens.shape[1], graph.n_slots, model.arch.d_model)
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            out[:, :, graph.q_slot(layer, h)] = cache[f"blocks.{layer}.hook_q_input"][:, :, h]
        for g in range(graph.n_kv_heads):
            out[:, :, graph.k_slot(layer, g)] = cache[f"blocks.{layer}.hook_k_input"][:, :, g]
            out[:, :, graph.v_slot(layer, g)] = cache[f"blocks.{layer}.hook_v_input"][:, :, g]
        out[:, :, graph.mlp_slot(layer)] = cache[f"blocks.{layer}.hook_resid_mid"]
    out[:, :, graph.logits_slot] = cache["ln_final.hook_in"]
    return out


def test_slot_input_is_sum_of_upstream_outputs(setup):
    model, graph, batch = setup
    consts = []
    for tokens in (batch.clean, model.to_tokens(["Berlin is a city in"] * 3)):
        outputs, _ = eap.record_outputs(model, graph, tokens)
        inputs = _slot_inputs(model, graph, tokens)
        for v in range(graph.n_slots):
            n = int(graph.n_upstream[v])
            total = outputs[:, :, :n].sum(dim=2)
            consts.append((inputs[:, :, v] - total)[:, :1])
        # only upstream nodes feed a slot: the mask is a prefix of the forward order
        assert graph.edge_mask.sum(0).tolist() == graph.n_upstream.tolist()
    # whatever is left (biases) does not depend on the input
    first = consts[: graph.n_slots]
    for i, c in enumerate(consts):
        assert torch.allclose(c[0], first[i % graph.n_slots][0], atol=1e-5)


# --------------------------------------------------------------------------------------------
# exact edge patching


def _reference_patched(model, graph, batch, mask, metric):
    """Plain reference: repeat full forward passes in which every slot's input is *set* to
    bias + sum over upstream u of (mask ? a_u from the previous pass : a_u corrupted), until the
    recorded outputs stop changing (layer l is right after l + 1 passes)."""
    corr, _ = eap.record_outputs(model, graph, batch.corrupted, batch.noise)
    clean, _ = eap.record_outputs(model, graph, batch.clean)
    clean_in = _slot_inputs(model, graph, batch.clean)
    bias = torch.stack([clean_in[:, :, v] - clean[:, :, : int(graph.n_upstream[v])].sum(2)
                        for v in range(graph.n_slots)], dim=2)
    prev = clean.clone()
    logits = None
    for _ in range(graph.n_layers + 1):
        def slot_value(v, prev=prev):
            total = bias[:, :, v].clone()
            for u in range(int(graph.n_upstream[v])):
                total += prev[:, :, u] if mask[u, v] else corr[:, :, u]
            return total

        hooks = []
        for layer in range(graph.n_layers):
            def q_hook(x, hook, layer=layer):
                return torch.stack([slot_value(graph.q_slot(layer, h)) for h in range(graph.n_heads)], dim=2)

            def k_hook(x, hook, layer=layer):
                return torch.stack([slot_value(graph.k_slot(layer, g)) for g in range(graph.n_kv_heads)], dim=2)

            def v_hook(x, hook, layer=layer):
                return torch.stack([slot_value(graph.v_slot(layer, g)) for g in range(graph.n_kv_heads)], dim=2)

            def mlp_hook(x, hook, layer=layer):
                return model.bridge.blocks[layer].ln2(slot_value(graph.mlp_slot(layer)))

            hooks += [(f"blocks.{layer}.hook_q_input", q_hook), (f"blocks.{layer}.hook_k_input", k_hook),
                      (f"blocks.{layer}.hook_v_input", v_hook), (f"blocks.{layer}.mlp.hook_in", mlp_hook)]
        hooks.append(("ln_final.hook_in", lambda x, hook: slot_value(graph.logits_slot)))
        new = torch.zeros_like(prev)
        names = {"blocks.0.hook_resid_pre": [0]}
        for layer in range(graph.n_layers):
            names[f"blocks.{layer}.attn.hook_result"] = [graph.head_node(layer, h) for h in range(graph.n_heads)]
            names[f"blocks.{layer}.hook_mlp_out"] = [graph.mlp_node(layer)]

        def recorder(idx, new=new):
            def record(x, hook):
                if x.dim() == 4:
                    for j, u in enumerate(idx):
                        new[:, :, u] = x[:, :, j]
                else:
                    new[:, :, idx[0]] = x

            return record

        hooks += [(n, recorder(idx)) for n, idx in names.items()]
        with torch.no_grad(), eap.edge_mode(model), model.bridge.hooks(fwd_hooks=hooks):
            logits = model.bridge(batch.clean)
        prev = new
    return metric_values(logits, batch, metric)


def test_full_and_empty_circuits(setup):
    model, graph, batch = setup
    a = eap.attribute(model, batch, "eap")
    full = eap.patched_metric(model, graph, batch, graph.edge_mask, "logit_diff", a.corrupted_outputs)
    empty = eap.patched_metric(model, graph, batch, torch.zeros_like(graph.edge_mask), "logit_diff")
    assert torch.allclose(full, a.metric_clean, atol=1e-5)
    assert torch.allclose(empty, a.metric_corrupted, atol=1e-5)
    assert not torch.allclose(a.metric_clean, a.metric_corrupted, atol=1e-3)


@pytest.mark.parametrize("metric", ["logit_diff", "logprob"])
def test_one_pass_patching_matches_multipass_reference(setup, metric):
    model, graph, batch = setup
    gen = torch.Generator().manual_seed(1)
    for keep in (0.5,):
        mask = (torch.rand(graph.n_forward, graph.n_slots, generator=gen) < keep) & graph.edge_mask
        fast = eap.patched_metric(model, graph, batch, mask, metric)
        ref = _reference_patched(model, graph, batch, mask, metric)
        assert torch.allclose(fast, ref, atol=1e-4), (fast, ref)


# --------------------------------------------------------------------------------------------
# scores


def test_eap_scores_are_derivatives_of_exact_patching(setup):
    """score(u->v) = d/dt metric(edge u->v carries a_u^clean + t (a_u^corr - a_u^clean)) at t = 0."""
    model, graph, batch = setup
    a = eap.attribute(model, batch, "eap", metric="logit_diff")
    clean, _ = eap.record_outputs(model, graph, batch.clean)
    delta = a.corrupted_outputs - clean
    t = 0.02
    checked = 0
    for kind in ("q", "k", "v", "mlp", "logits"):
        cols = [v for v in range(graph.n_slots) if graph.slot_kind[v] == kind]
        sub = a.scores[:, cols].abs()
        flat = int(sub.argmax())
        u, v = flat // len(cols), cols[flat % len(cols)]
        assert graph.edge_mask[u, v]
        mask = graph.edge_mask.clone()
        mask[u, v] = False
        plus = eap.patched_metric(model, graph, batch, mask, "logit_diff", clean + t * delta)
        minus = eap.patched_metric(model, graph, batch, mask, "logit_diff", clean - t * delta)
        fd = float((plus - minus).mean()) / (2 * t)
        score = float(a.scores[u, v])
        assert abs(fd - score) <= 0.02 * abs(score) + 1e-6, (kind, graph.edge_name(u, v), fd, score)
        checked += 1
    assert checked == 5
    assert torch.all(a.scores[~graph.edge_mask] == 0)


def test_eap_ig_one_step_is_eap(setup):
    model, _, batch = setup
    e = eap.attribute(model, batch, "eap")
    ig = eap.attribute(model, batch, "eap-ig", ig_steps=1)
    assert torch.allclose(e.scores, ig.scores, atol=1e-6)


def test_eap_ig_completeness(tiny):
    """Integrated gradients along the embedding path: the input node's edges sum to
    F-bar = (1/k) sum_j F(j/k), a right Riemann sum of F(alpha) = delta . grad M(x_alpha), whose
    integral is exactly M(corrupted) - M(clean). With the end-point correction
    (F(1) - F(0)) / 2k (trapezoid rule, error O(1/k^2)) it must match to well under a percent;
    F(1) is plain EAP's input total, F(0) is EAP's on the batch with clean and corrupted swapped."""
    import dataclasses

    facts = _facts()[:2]
    batch = make_batch(tiny, facts, "swap", contrast_subjects=["Italy", "France"], contrasts=["Rome", "Paris"])
    k = 8
    ig = eap.attribute(tiny, batch, "eap-ig", ig_steps=k)
    e1 = eap.attribute(tiny, batch, "eap")
    flipped = dataclasses.replace(batch, clean=batch.corrupted, corrupted=batch.clean)
    e0 = eap.attribute(tiny, flipped, "eap")
    f1 = float(e1.scores[0].sum())
    f0 = -float(e0.scores[0].sum())
    trapezoid = float(ig.scores[0].sum()) - (f1 - f0) / (2 * k)
    target = float((ig.metric_corrupted - ig.metric_clean).mean())
    assert abs(target) > 1e-4
    assert abs(trapezoid - target) <= 0.01 * abs(target) + 1e-6, (trapezoid, target, f0, f1)


def test_swap_corruption_and_errors(tiny_llama):
    facts = _facts()[:2]
    batch = make_batch(tiny_llama, facts, "swap", contrast_subjects=["Italy", "France"])
    assert batch.corrupted_prompts == ["The capital of Italy is", "The capital of France is"]
    assert batch.contrasts == ["Rome", "Paris"] or batch.contrasts == ["Paris", "Rome"] or batch.contrasts
    a = eap.attribute(tiny_llama, batch, "eap-ig", ig_steps=2, metric="logprob")
    assert a.scores.shape == (Graph.from_model(tiny_llama).n_forward, Graph.from_model(tiny_llama).n_slots)
    with pytest.raises(ValueError, match="tokens"):
        make_batch(tiny_llama, facts[:1], "swap", contrast_subjects=["the Eiffel Tower of Paris"])
    with pytest.raises(ValueError, match="unknown corruption"):
        make_batch(tiny_llama, facts, "blur")
    with pytest.raises(ValueError, match="unknown method"):
        eap.attribute(tiny_llama, batch, "acdc")
    with pytest.raises(ValueError, match="unknown metric"):
        eap.attribute(tiny_llama, batch, "eap", metric="kl")
    with pytest.raises(ValueError, match="ig_steps"):
        eap.attribute(tiny_llama, batch, "eap-ig", ig_steps=0)
    with pytest.raises(ValueError, match="does not occur"):
        as_template("The capital of France is", "Germany")
    assert as_template("The capital of France is", "France") == PROMPT


def test_subject_span(tiny_gpt2):
    a, b = tiny_gpt2.subject_span("The Eiffel Tower is in {}", "Paris")
    toks = tiny_gpt2.to_tokens("The Eiffel Tower is in Paris")[0]
    assert b == toks.shape[0]
    assert tiny_gpt2.tokenizer.decode(toks[a:b]).strip() == "Paris"
    a, b = tiny_gpt2.subject_span("{} is in Paris", "The Eiffel Tower")
    assert a == 1  # right after BOS
    assert tiny_gpt2.tokenizer.decode(tiny_gpt2.to_tokens("The Eiffel Tower is in Paris")[0, a:b]) == "The Eiffel Tower"


# --------------------------------------------------------------------------------------------
# circuit, roles, diff


def test_dla_sums_to_logits(setup):
    model, graph, batch = setup
    dla = node_logit_attribution(model, graph, batch)
    logits = model.bridge(batch.clean)[torch.arange(batch.size), batch.last]
    expect = logits[torch.arange(batch.size), batch.answer] - logits.mean(-1)
    bias = model.hf.get_output_embeddings().bias
    if bias is not None:
        expect = expect - (bias[batch.answer] - bias.mean())
    assert torch.allclose(dla.sum(1), expect, atol=1e-3)


def test_knowledge_circuit_end_to_end(setup, tmp_path):
    model, graph, batch = setup
    c = knowledge_circuit(model, batch, method="eap-ig", ig_steps=3, target_faithfulness=0.8)
    assert c.curve and c.curve["fraction"][-1] == 1.0 and abs(c.curve["faithfulness"][-1] - 1.0) < 1e-4
    ok = [f >= 0.8 for f in c.curve["faithfulness"]]
    pick = ok.index(True)
    assert c.n_edges == c.curve["n_edges"][pick]
    assert c.faithfulness == pytest.approx(c.curve["faithfulness"][pick], abs=1e-6)
    c.save(tmp_path / "c")
    d = Circuit.load(tmp_path / "c")
    assert torch.equal(c.mask, d.mask) and d.meta["method"] == "eap-ig"
    top = knowledge_circuit(model, batch, method="eap", top_n=20)
    assert top.n_edges <= 20 and not top.curve
    # roles: evidence read back plainly
    report = head_roles(model, c, batch, attention_threshold=0.2)
    assert {r.node for r in report.roles} == {n for n in c.nodes() if n not in ("input", "logits")}
    heads = [r for r in report.roles if r.node.startswith("a")]
    if heads:
        r = heads[0]
        layer, head = int(r.node[1:].split(".h")[0]), int(r.node.split(".h")[1])
        _, cache = model.bridge.run_with_cache(batch.clean)
        pat = cache[f"blocks.{layer}.attn.hook_pattern"][:, head]
        subj = [float(pat[i, batch.last[i], a:b].sum()) for i, (a, b) in enumerate(batch.subject_spans)]
        assert r.evidence["attention_to_subject"] == pytest.approx(sum(subj) / len(subj), abs=1e-5)
    assert report.figure() is not None and json.dumps(report.to_dict())


def test_circuit_diff_after_weight_change(tiny_llama, tmp_path):
    batch = make_batch(tiny_llama, _facts(), "noise", scale=1.0)
    before = knowledge_circuit(tiny_llama, batch, method="eap", top_n=30)
    same = circuit_diff(before, before)
    assert not same.gained and not same.lost and not same.reweighted and not same.new_carriers
    w = tiny_llama.mlp_out_weight(2)
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            # write the target_new direction into MLP 2's output: a crude "edit"
            u = tiny_llama.hf.get_output_embeddings().weight[batch.new_answer[0]]
            w += 0.5 * torch.outer(u, torch.ones(w.shape[1]))
        after = knowledge_circuit(tiny_llama, batch, method="eap", top_n=30)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    d = circuit_diff(before, after, min_dla_gain=0.1)
    mb, ma = before.mask, after.mask
    assert {r["edge"] for r in d.gained} == {before.graph.edge_name(u, v) for u, v in (ma & ~mb).nonzero().tolist()}
    assert {r["edge"] for r in d.lost} == {before.graph.edge_name(u, v) for u, v in (mb & ~ma).nonzero().tolist()}
    assert d.summary["n_gained"] + d.summary["n_shared"] == after.n_edges
    g = before.graph
    gain = after.node_dla[1] - before.node_dla[1]
    assert int(gain.argmax()) == g.mlp_node(2)  # the changed MLP now writes target_new most
    carriers = {r["node"] for r in d.new_carriers}
    expect = {g.node_names[u] for u in range(g.n_forward)
              if gain[u] >= 0.1 and after.node_dla[1, u] > 0 and g.node_names[u] in after.nodes()}
    assert carriers == expect
    d.save(tmp_path / "d")
    assert CircuitDiff.load(tmp_path / "d").summary == d.summary
    assert len(d.figure().data) == 2
    other = knowledge_circuit(tiny_llama, batch, method="eap", top_n=5)
    from knowscope.circuits.graph import Graph as G

    wrong = Circuit(graph=G(2, 4, 2), scores=torch.zeros(G(2, 4, 2).n_forward, G(2, 4, 2).n_slots),
                    mask=prune(G(2, 4, 2), torch.zeros(G(2, 4, 2).n_forward, G(2, 4, 2).n_slots), top_n=0))
    with pytest.raises(ValueError, match="different graphs"):
        circuit_diff(other, wrong)


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_circuit(tmp_path, capsys):
    from knowscope.cli import main

    out = tmp_path / "r.json"
    rc = main(["circuit", "--model", "tiny-llama", "--device", "cpu", "--prompt", "The capital of France is",
               "--subject", "France", "--target", "Paris", "--contrast-subject", "Italy", "--contrast", "Rome",
               "--method", "eap-ig", "--ig-steps", "2", "--out", str(tmp_path / "c"), "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("n_edges_total", "n_edges_circuit", "faithfulness", "metric_clean", "metric_corrupted", "nodes",
                "edges", "seconds"):
        assert key in data
    assert data["metric"] == "logit_diff" and data["corruption"] == "swap"
    assert data["faithfulness"] >= 0.8 and data["n_edges_circuit"] == len(data["edges"])
    assert Circuit.load(tmp_path / "c").n_edges == data["n_edges_circuit"]
    rc = main(["circuit", "--model", "tiny-llama", "--device", "cpu", "--prompt", "The capital of France is",
               "--subject", "Germany", "--target", "Paris"])
    assert rc == 2 and "does not occur" in capsys.readouterr().err
    rc = main(["circuit", "--model", "tiny-llama", "--device", "cpu", "--prompt", "The capital of France is",
               "--subject", "France", "--target", "Paris", "--contrast-subject", "the Eiffel Tower of Paris"])
    err = capsys.readouterr().err
    assert rc == 2 and "tokens" in err and "same token length" in err
