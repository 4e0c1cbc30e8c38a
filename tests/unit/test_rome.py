"""ROME on tiny models: the closed form is exact (W' k* = v*, rank one), edits leave the model's
weights untouched, deltas round-trip through save/load, and another model's deltas are refused."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import EditMismatchError, EditResult, EditSession, rome
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.keys import compute_keys, context_templates
from knowscope.editing.stats import layer_stats
from knowscope.facts import Fact

FACTS = [
    Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy"),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball"),
]
HP = ROMEHyperParams(layer=1, v_steps=4, context_lengths=((4, 2),), stats_tokens=400)


@pytest.fixture(scope="module")
def stats_by_model():
    return {}


def stats_for(model, cache):
    key = model.name
    if key not in cache:
        cache[key] = layer_stats(model, HP.layer, n_tokens=HP.stats_tokens, seq_len=32, batch_size=8, progress=False)
    return cache[key]


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters().items()}


def assert_unchanged(model, snap):
    for n, p in model.named_parameters().items():
        assert torch.equal(p, snap[n]), n


def test_rank_one_update_is_exact():
    torch.manual_seed(1)
    W, A = torch.randn(6, 10), torch.randn(10, 40)
    C = A @ A.T / 40
    k, v = torch.randn(10), torch.randn(6)
    dW = rome.rank_one_update(W, C, k, v)
    torch.testing.assert_close((W.double() + dW) @ k.double(), v.double(), rtol=1e-9, atol=1e-9)
    assert torch.linalg.matrix_rank(dW) == 1
    # keys C⁻¹-orthogonal to k are not changed: ΔW x = 0 for kᵀ C⁻¹ x = 0
    u = torch.linalg.solve(C.double(), k.double())
    x = torch.randn(10).double()
    x = x - (u @ x) / (u @ u) * u
    assert float((dW @ x).abs().max()) < 1e-9


def test_template_rank_one_update_adds_delta_on_every_key():
    torch.manual_seed(2)
    A = torch.randn(10, 40)
    C = A @ A.T / 40
    K, delta, W = torch.randn(4, 10), torch.randn(6), torch.randn(6, 10)
    dW = rome.template_rank_one_update(C, K, delta)
    torch.testing.assert_close(dW @ K.double().T, delta.double()[:, None].expand(6, 4), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(dW @ K.double().mean(0), delta.double(), rtol=1e-8, atol=1e-8)
    assert torch.linalg.matrix_rank(dW) == 1
    # one key: the same update as ROME's closed form with v = W k + δ
    k = K[0]
    v = W.double() @ k.double() + delta
    torch.testing.assert_close(rome.template_rank_one_update(C, k[None], delta),
                               rome.rank_one_update(W.double(), C, k, v), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("key_constraint", ["mean", "templates"])
def test_rome_closed_form_on_model(tiny, stats_by_model, key_constraint):
    C = stats_for(tiny, stats_by_model).mom2
    templates = context_templates(tiny, HP.context_lengths, HP.seed)
    snap = snapshot(tiny)
    hp = HP.with_(key_constraint=key_constraint, norm_reference="templates")
    dW, k, v, info = rome.compute_update(tiny, FACTS[0], HP.layer, C, hp, templates)
    W = tiny.mlp_out_matrix(HP.layer).detach().double()
    torch.testing.assert_close((W + dW) @ k.double(), v.double(), rtol=1e-6, atol=1e-6)
    assert torch.linalg.matrix_rank(dW.float(), rtol=1e-5) == 1
    assert info["steps"] >= 1
    assert_unchanged(tiny, snap)


def test_edit_result_applies_and_matches_k_star(tiny, stats_by_model):
    st = stats_for(tiny, stats_by_model)
    snap = snapshot(tiny)
    res = rome.edit(tiny, [FACTS[0]], hparams=HP, stats=st)
    assert_unchanged(tiny, snap)  # edit() never leaves the model changed
    name = tiny.arch.mlp_out_name(HP.layer)
    assert set(res.deltas) == {name} and res.deltas[name].shape == tiny.mlp_out_weight(HP.layer).shape
    templates = context_templates(tiny, HP.context_lengths, HP.seed)
    k = compute_keys(tiny, HP.layer, [FACTS[0]], templates)[0]
    W = tiny.mlp_out_matrix(HP.layer).detach().clone()
    dW, _, v, _ = rome.compute_update(tiny, FACTS[0], HP.layer, st.mom2, HP.with_(), templates)
    session = EditSession(tiny)
    session.apply(res)
    # stored layout converts back to the [d_model, d_mlp] view: W' k* = v*
    torch.testing.assert_close(tiny.mlp_out_matrix(HP.layer) @ k, v.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tiny.mlp_out_matrix(HP.layer) - W, dW.float(), rtol=1e-5, atol=1e-6)
    session.rollback()
    assert_unchanged(tiny, snap)  # bit for bit


def test_sequential_requests_and_failure_leaves_weights(tiny_gpt2, stats_by_model, monkeypatch):
    st = stats_for(tiny_gpt2, stats_by_model)
    snap = snapshot(tiny_gpt2)
    res = rome.edit(tiny_gpt2, FACTS, hparams=HP, stats=st)
    assert_unchanged(tiny_gpt2, snap)
    assert len(res.requests) == 2 and len(res.extra["per_request"]) == 2
    # the sum of two rank-one updates: rank two
    assert torch.linalg.matrix_rank(res.deltas[tiny_gpt2.arch.mlp_out_name(1)], rtol=1e-5) == 2
    # a failure after the first request was applied internally restores the weights exactly
    calls = {"n": 0}
    real = rome.compute_update

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*a, **kw)

    monkeypatch.setattr(rome, "compute_update", failing)
    with pytest.raises(RuntimeError, match="boom"):
        rome.edit(tiny_gpt2, FACTS, hparams=HP, stats=st)
    assert_unchanged(tiny_gpt2, snap)


def test_saved_deltas_reproduce_outputs_and_other_model_refused(tiny_gpt2, tiny_llama, stats_by_model, tmp_path):
    st = stats_for(tiny_gpt2, stats_by_model)
    res = rome.edit(tiny_gpt2, [FACTS[1]], hparams=HP, stats=st)
    toks = tiny_gpt2.to_tokens("Lionel Messi plays the sport of")
    session = EditSession(tiny_gpt2)
    with torch.no_grad():
        base = tiny_gpt2(toks)
        with session.temporary(res):
            edited = tiny_gpt2(toks)
        assert not torch.allclose(base, edited)
        res.save(tmp_path / "edit")
        loaded = EditResult.load(tmp_path / "edit")
        with session.temporary(loaded):
            again = tiny_gpt2(toks)
    assert torch.equal(edited, again)
    with pytest.raises(EditMismatchError, match="different model"):
        EditSession(tiny_llama).apply(loaded)


def test_bad_inputs(tiny_gpt2, stats_by_model):
    st = stats_for(tiny_gpt2, stats_by_model)
    with pytest.raises(ValueError, match="empty"):
        rome.edit(tiny_gpt2, [], hparams=HP, stats=st)
    with pytest.raises(ValueError, match="exactly one layer"):
        rome.edit(tiny_gpt2, FACTS[:1], layers=[1, 2], hparams=HP, stats=st)
    with pytest.raises(ValueError, match="layer 7"):
        rome.edit(tiny_gpt2, FACTS[:1], layers=7, hparams=HP, stats=st)
    with pytest.raises(ValueError, match="layer 1, the edit is at layer 2"):
        rome.edit(tiny_gpt2, FACTS[:1], layers=2, hparams=HP, stats=st)
    with pytest.raises(ValueError, match="'best'"):
        rome.edit(tiny_gpt2, FACTS[:1], layers="best", hparams=HP, stats=st)


def test_hparams_defaults(tiny_gpt2, tiny_llama):
    for m in (tiny_gpt2, tiny_llama):
        hp = ROMEHyperParams.for_model(m)
        assert 0 <= hp.layer < m.arch.n_layers
        mh = MEMITHyperParams.for_model(m)
        assert all(0 <= x < m.arch.n_layers for x in mh.layers)
    from knowscope.editing.hparams import from_dict

    assert from_dict(MEMITHyperParams, MEMITHyperParams().to_dict()) == MEMITHyperParams()
