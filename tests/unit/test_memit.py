"""MEMIT on tiny models: the batched solve equals the explicit formula, edit() equals a plain
reference built from per-prompt forwards, and the null-space mode leaves C's principal keys and
earlier batches alone."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import EditSession, memit
from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.keys import context_templates, prompt_ids
from knowscope.editing.stats import key_stats
from knowscope.facts import Fact

FACTS = [
    Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy"),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball"),
    Fact(subject="Tokyo", prompt="{} is located in", target_true="Japan", target_new="Spain"),
]
HP = MEMITHyperParams(layers=(1, 2), v_steps=3, context_lengths=((4, 2),), mom2_weight=50.0, stats_tokens=400,
                      null_space_threshold=0.05, null_space_l2=1.0)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters().items()}


@pytest.fixture(scope="module")
def stats_cache():
    return {}


def stats_for(model, cache):
    if model.name not in cache:
        cache[model.name] = key_stats(model, list(HP.layers), n_tokens=HP.stats_tokens, seq_len=32, batch_size=8,
                                      progress=False)
    return cache[model.name]


def test_memit_solve_matches_explicit_formula():
    torch.manual_seed(0)
    A = torch.randn(12, 60)
    C = A @ A.T / 60
    K, R = torch.randn(12, 4), torch.randn(7, 4)
    got = memit.memit_solve(K, R, C, 3.0)
    Kd, Rd, Cd = K.double(), R.double(), C.double()
    ref = Rd @ Kd.T @ torch.linalg.inv(3.0 * Cd + Kd @ Kd.T)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


def test_null_space_solve_matches_formula_and_annihilates():
    torch.manual_seed(0)
    d = 16
    U, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    evals = torch.cat([torch.linspace(1.0, 0.5, 10), torch.full((6,), 1e-6)]).double()
    C = U @ torch.diag(evals) @ U.T
    P = memit.null_space_projector(C, 1e-3)
    assert torch.allclose(P, P @ P, atol=1e-10) and round(float(torch.trace(P))) == 6
    K, R = torch.randn(d, 3).double(), torch.randn(5, 3).double()
    Kp = P @ torch.randn(d, 2).double()  # earlier edited keys (in the null space too)
    got = memit.null_space_solve(K, R, P, Kp @ Kp.T, 0.1)
    ref = (torch.linalg.inv(P @ (K @ K.T + Kp @ Kp.T) + 0.1 * torch.eye(d, dtype=torch.float64)) @ P @ K @ R.T).T
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)
    # the update annihilates C's principal space (the keys the model normally sees)
    principal = U[:, :10]
    assert float((got @ principal).abs().max()) < 1e-8
    torch.testing.assert_close(got @ P, got, rtol=1e-8, atol=1e-10)
    # the running sum of earlier keys suppresses the update on them
    without = memit.null_space_solve(K, R, P, torch.zeros(d, d, dtype=torch.float64), 0.1)
    heavy = memit.null_space_solve(K, R, P, 1e4 * Kp @ Kp.T, 0.1)
    assert (heavy @ Kp).norm() < 1e-3 * (without @ Kp).norm()
    assert (got @ Kp).norm() < (without @ Kp).norm()


def plain_reference(model, facts, hp, C_by_layer, Z):
    """MEMIT written plainly: per-prompt forwards for keys and residuals, explicit inverse, layer by layer."""
    templates = context_templates(model, hp.context_lengths, hp.seed)
    params = model.named_parameters()
    saved = {layer: params[model.arch.mlp_out_name(layer)].detach().clone() for layer in hp.layers}
    out = {}
    try:
        for i, layer in enumerate(hp.layers):
            ks, cur = [], []
            # MEMIT's compute_ks: the templates come in groups (the plain "{}", then each (length, n)
            # entry's n prefixes); keys are averaged within each group, then the group means averaged
            sizes = [1] + [n for _, n in hp.context_lengths]
            starts = [sum(sizes[:g]) for g in range(len(sizes))]
            groups = [templates[a : a + size] for a, size in zip(starts, sizes, strict=True)]
            for f in facts:
                group_means = []
                for group in groups:
                    per = []
                    for t in group:
                        ids, idx = prompt_ids(model, t.format(f.prompt), f.subject)
                        _, cache = model.bridge.run_with_cache(torch.tensor([ids]))
                        per.append(cache[f"blocks.{layer}.mlp.hook_post"][0, idx].double())
                    group_means.append(torch.stack(per).mean(0))
                ks.append(torch.stack(group_means).mean(0))
                ids, idx = prompt_ids(model, f.prompt, f.subject)
                _, cache = model.bridge.run_with_cache(torch.tensor([ids]))
                cur.append(cache[f"blocks.{hp.layers[-1]}.hook_resid_post"][0, idx].double())
            K, cur_z = torch.stack(ks, 1), torch.stack(cur, 1)
            R = (Z - cur_z) / (len(hp.layers) - i)
            dW = R @ K.T @ torch.linalg.inv(hp.mom2_weight * C_by_layer[layer].double() + K @ K.T)
            out[layer] = dW
            W = params[model.arch.mlp_out_name(layer)]
            with torch.no_grad():
                W.add_(model.to_param_layout(layer, dW.float()))
    finally:
        with torch.no_grad():
            for layer, w in saved.items():
                params[model.arch.mlp_out_name(layer)].copy_(w)
    return out


def test_memit_edit_matches_plain_reference(tiny, stats_cache):
    stats = stats_for(tiny, stats_cache)
    snap = snapshot(tiny)
    res = memit.edit(tiny, FACTS, hparams=HP, stats=stats)
    for n, p in tiny.named_parameters().items():
        assert torch.equal(p, snap[n]), n  # weights untouched after edit()
    templates = context_templates(tiny, HP.context_lengths, HP.seed)
    torch.manual_seed(HP.seed)
    Z, _ = memit.compute_zs(tiny, FACTS, HP.layers[-1], templates, HP)
    ref = plain_reference(tiny, FACTS, HP, {k: v.mom2 for k, v in stats.items()}, Z)
    assert res.layers == list(HP.layers)
    for layer in HP.layers:
        got = tiny.to_param_layout(layer, res.deltas[tiny.arch.mlp_out_name(layer)]).double()
        torch.testing.assert_close(got, ref[layer], rtol=1e-4, atol=1e-6)


def test_memit_keys_weigh_the_plain_prompt_one_half(tiny_llama):
    """With one prefix group, MEMIT's key is 1/2 plain prompt + 1/2 the mean of the prefixed prompts."""
    from knowscope.editing.keys import compute_keys, template_group_weights

    hp = MEMITHyperParams(context_lengths=((4, 3),))
    templates = context_templates(tiny_llama, hp.context_lengths, hp.seed)
    assert len(templates) == 4 and templates[0] == "{}"
    f = FACTS[1]

    def key(t):
        ids, idx = prompt_ids(tiny_llama, t.format(f.prompt), f.subject)
        _, cache = tiny_llama.bridge.run_with_cache(torch.tensor([ids]))
        return cache["blocks.1.mlp.hook_post"][0, idx].double()

    want = 0.5 * key(templates[0]) + 0.5 * torch.stack([key(t) for t in templates[1:]]).mean(0)
    got = compute_keys(tiny_llama, 1, [f], templates, template_group_weights(hp.context_lengths))[0].double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    uniform = compute_keys(tiny_llama, 1, [f], templates)[0].double()
    assert (uniform - want).abs().max() > 1e-4  # the two averagings really differ here
    torch.testing.assert_close(template_group_weights(((10, 5),)),
                               torch.tensor([0.5] + [0.1] * 5, dtype=torch.float64))


def test_sequential_null_space_state(tiny_llama, stats_cache):
    stats = stats_for(tiny_llama, stats_cache)
    snap = snapshot(tiny_llama)
    seq = memit.SequentialMEMIT(tiny_llama, hparams=HP, null_space=True, stats=stats)
    session = EditSession(tiny_llama)
    r1 = seq.edit(FACTS[:2])
    for layer in HP.layers:
        assert torch.linalg.matrix_rank(seq.KpKp[layer]) == 2
    session.apply(r1)
    kp = {layer: seq.KpKp[layer].clone() for layer in HP.layers}
    r2 = seq.edit(FACTS[2:])
    assert seq.n_batches == 2 and seq.n_edits == 3 and r2.method == "memit-null-space"
    for layer in HP.layers:
        dW = tiny_llama.to_param_layout(layer, r2.deltas[tiny_llama.arch.mlp_out_name(layer)]).double()
        P = seq.P[layer]
        evals, evecs = torch.linalg.eigh(stats[layer].mom2.double())
        principal = evecs[:, evals >= HP.null_space_threshold * evals.max()]
        # the stats' principal keys are annihilated; the update lives in the null space
        assert float((dW @ principal).norm()) < 1e-4 * float(dW.norm())
        torch.testing.assert_close(dW @ P, dW, rtol=1e-4, atol=1e-6)
        # the running sum now holds both batches' keys
        assert torch.linalg.matrix_rank(seq.KpKp[layer]) == 3 and not torch.equal(seq.KpKp[layer], kp[layer])
    session.rollback()
    for n, p in tiny_llama.named_parameters().items():
        assert torch.equal(p, snap[n]), n


def test_bad_inputs(tiny_gpt2, stats_cache):
    stats = stats_for(tiny_gpt2, stats_cache)
    with pytest.raises(ValueError, match="duplicates"):
        memit.edit(tiny_gpt2, FACTS, layers=[1, 1], hparams=HP, stats=stats)
    with pytest.raises(ValueError, match="layer 8"):
        memit.edit(tiny_gpt2, FACTS, layers=[1, 8], hparams=HP, stats=stats)
    with pytest.raises(ValueError, match="missing edited layer 3"):
        memit.edit(tiny_gpt2, FACTS, layers=[1, 3], hparams=HP, stats=stats)
    with pytest.raises(ValueError, match="empty"):
        memit.edit(tiny_gpt2, [], hparams=HP, stats=stats)
    with pytest.raises(ValueError, match="null_space_threshold"):
        memit.null_space_projector(torch.eye(3), 2.0)


def _held_out_keys(model, layer, n_tokens=256):
    """MLP keys on text the statistics never saw (sampled with another seed than key_stats uses)."""
    from knowscope.texts import generated_batch

    toks = generated_batch(model, index=0, batch_size=n_tokens // 32, seq_len=32, seed=12345)
    _, cache = model.bridge.run_with_cache(toks, names_filter=model.arch.hook_mlp_key(layer))
    return cache[model.arch.hook_mlp_key(layer)].reshape(-1, model.arch.d_mlp).T.double()  # [d_mlp, n]


def _two_batches(model, stats, null_space):
    seq = memit.SequentialMEMIT(model, hparams=HP, null_space=null_space, stats=stats)
    session = EditSession(model)
    try:
        r1 = seq.edit(FACTS[:2])
        session.apply(r1)
        r2 = seq.edit(FACTS[2:])
    finally:
        session.rollback()
    return r1, r2


def test_null_space_keeps_batch_one_and_held_out_keys(tiny_llama, stats_cache):
    """The property null-space editing exists for, measured against plain MEMIT on the same batches:
    keys of text the statistics never saw barely move (measured 0.0017 of |W k| vs 0.65 for plain
    MEMIT), and batch 2 moves batch 1's keys by under 15% of what batch 1 did to them (measured 0.09).
    Plain MEMIT moves batch 1's keys even less here (0.03): with null_space_l2 = 1 the ridge term
    outweighs K_p K_pᵀ of these small keys - the weighting issue #19 is about."""
    stats = stats_for(tiny_llama, stats_cache)
    layer = HP.layers[0]
    name = tiny_llama.arch.mlp_out_name(layer)
    W = tiny_llama.mlp_out_matrix(layer).double()
    held = _held_out_keys(tiny_llama, layer)
    from knowscope.editing.keys import compute_keys, context_templates, template_group_weights

    templates = context_templates(tiny_llama, HP.context_lengths, HP.seed)
    K1 = compute_keys(tiny_llama, layer, FACTS[:2], templates, template_group_weights(HP.context_lengths)).T.double()
    out = {}
    for null_space in (True, False):
        r1, r2 = _two_batches(tiny_llama, stats, null_space)
        d1 = tiny_llama.to_param_layout(layer, r1.deltas[name]).double()
        d2 = tiny_llama.to_param_layout(layer, r2.deltas[name]).double()
        out[null_space] = {"batch1": float((d2 @ K1).norm() / (d1 @ K1).norm()),
                           "held_out": float(((d1 + d2) @ held).norm() / (W @ held).norm())}
    print(out)
    ns, plain = out[True], out[False]
    assert ns["batch1"] < 0.15, out
    assert ns["held_out"] < 0.01 and plain["held_out"] > 0.1, out


def test_null_space_rules_relative_and_absolute():
    U, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    # no eigenvalue on a threshold (1e-2 here): eigh's rounding would decide which side it falls
    evals = torch.tensor([100.0, 10.0, 0.5, 0.2, 0.05, 0.02, 1e-4, 1e-6], dtype=torch.float64)
    C = U @ torch.diag(evals) @ U.T
    # relative: below 1e-2 x 100 = 1 (six eigenvalues); absolute: below 1e-2 itself (two)
    rel = memit.null_space_projector(C, 1e-2)
    ab = memit.null_space_projector(C, 1e-2, "absolute")
    assert round(float(torch.trace(rel))) == 6 and round(float(torch.trace(ab))) == 2
    torch.testing.assert_close(ab, U[:, 6:] @ U[:, 6:].T, rtol=0, atol=1e-10)
    # the absolute rule takes thresholds above 1 (C's scale is the model's), the relative one does not
    assert round(float(torch.trace(memit.null_space_projector(C, 20.0, "absolute")))) == 7
    with pytest.raises(ValueError, match="relative rule"):
        memit.null_space_projector(C, 20.0)
    with pytest.raises(ValueError, match="null_space_rule"):
        memit.null_space_projector(C, 0.1, "median")
    with pytest.raises(ValueError, match="null_space_rule"):
        MEMITHyperParams(null_space_rule="median")
    assert MEMITHyperParams(null_space_rule="absolute", null_space_threshold=5.0).null_space_threshold == 5.0


def test_given_targets_skip_the_z_optimisation_and_give_the_same_update(tiny_llama, stats_cache):
    stats = stats_for(tiny_llama, stats_cache)
    hp = HP
    layers = list(hp.layers)
    templates = context_templates(tiny_llama, hp.context_lengths, hp.seed)
    targets = memit.compute_zs(tiny_llama, FACTS, layers[-1], templates, hp)
    for null_space in (False, True):
        plain = memit.SequentialMEMIT(tiny_llama, hparams=hp, stats=stats, null_space=null_space).edit(FACTS)
        given = memit.SequentialMEMIT(tiny_llama, hparams=hp, stats=stats, null_space=null_space).edit(
            FACTS, targets=targets)
        for name, d in plain.deltas.items():
            torch.testing.assert_close(given.deltas[name], d, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="2 z vectors for 3 requests"):
        memit.SequentialMEMIT(tiny_llama, hparams=hp, stats=stats).edit(FACTS, targets=(targets[0][:, :2], []))
