"""Constrained fine-tuning (FT-L) against a plain reference loop on tiny models."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import ft
from knowscope.editing.ft import FTHyperParams
from knowscope.editing.session import EditSession
from knowscope.facts import Fact

FACTS = [
    Fact(subject="Eiffel Tower", prompt="The {} is located in the city of", target_true="Paris", target_new="Rome"),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball court"),
    Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico City now"),
]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters().items()}


def _reference_ft(model, facts, layer, hp: FTHyperParams) -> dict[str, torch.Tensor]:
    """FT-L written plainly: one unpadded forward pass per fact, Adam, elementwise clamp after each step."""
    params = model.named_parameters()
    name = model.arch.mlp_out_name(layer)
    names = [name] + ([name[: -len("weight")] + "bias"] if name[: -len("weight")] + "bias" in params else [])
    orig = {n: params[n].detach().clone() for n in names}
    for n in names:
        params[n].requires_grad_(True)
    opt = torch.optim.Adam([params[n] for n in names], lr=hp.lr, weight_decay=hp.weight_decay)
    try:
        for _ in range(hp.num_steps):
            opt.zero_grad()
            losses = []
            for f in facts:
                p = model.to_tokens(f.text)[0].tolist()
                t = model.tokenizer.encode(" " + f.target_new, add_special_tokens=False)
                logits = model(torch.tensor([p + t]))[0]
                nll = []
                for j, tok in enumerate(t):
                    row = logits[len(p) - 1 + j] if hp.objective == "target_new" else logits[len(p) - 1]
                    nll.append(-torch.log_softmax(row, -1)[tok])
                losses.append(torch.stack(nll).mean())
            loss = torch.stack(losses).mean()
            if loss.item() >= hp.early_stop_loss:
                loss.backward()
                opt.step()
            with torch.no_grad():
                for n in names:
                    eps = hp.norm_constraint
                    params[n].copy_(torch.maximum(torch.minimum(params[n], orig[n] + eps), orig[n] - eps))
            if loss.item() < hp.early_stop_loss:
                break
        return {n: (params[n].detach() - orig[n]).clone() for n in names}
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(orig[n])
                params[n].requires_grad_(False)


def _nll(model, fact):
    p = model.to_tokens(fact.text)[0].tolist()
    t = model.tokenizer.encode(fact.new_continuation, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([p + t]))[0]
    return float(-torch.stack([torch.log_softmax(logits[len(p) - 1 + j], -1)[tok] for j, tok in enumerate(t)]).mean())


@pytest.mark.parametrize("objective", ["target_new", "prompt_last"])
def test_batched_ft_matches_plain_reference(tiny, objective):
    hp = FTHyperParams(lr=5e-3, num_steps=6, norm_constraint=4e-3, objective=objective)
    snap = _snapshot(tiny)
    result = ft.edit(tiny, FACTS, layers=2, hparams=hp)
    for k, v in tiny.named_parameters().items():  # the editor leaves the model as it was, bit for bit
        assert torch.equal(v, snap[k])
    ref = _reference_ft(tiny, FACTS, 2, hp)
    assert set(result.deltas) == set(ref)
    for name, delta in ref.items():
        torch.testing.assert_close(result.deltas[name], delta, atol=2e-6, rtol=0)
    assert result.method == "ft" and result.layers == [2] and result.fingerprint == tiny.fingerprint
    assert len(result.requests) == 3 and result.hparams["objective"] == objective
    if tiny.arch.family == "gpt2":  # Conv1D's bias is part of the projection, as in the original FT-L
        assert any(n.endswith("c_proj.bias") for n in result.deltas)


def test_update_respects_the_linf_bound_and_lowers_the_loss(tiny):
    eps = 2e-3
    hp = FTHyperParams(lr=1e-2, num_steps=10, norm_constraint=eps)
    result = ft.edit(tiny, FACTS[:1], layers=1, hparams=hp)
    name = tiny.arch.mlp_out_name(1)
    assert set(n.rsplit(".", 1)[0] for n in result.deltas) == {name.rsplit(".", 1)[0]}
    for delta in result.deltas.values():
        assert float(delta.abs().max()) <= eps * (1 + 1e-5)
    assert float(result.deltas[name].abs().max()) == pytest.approx(eps, rel=1e-5)  # the bound is active
    before = _nll(tiny, FACTS[0])
    session = EditSession(tiny)
    with session.temporary(result):
        after = _nll(tiny, FACTS[0])
    assert after < before
    hist = result.extra["loss_history"]
    assert len(hist) == 10 and hist[-1] < hist[0]


def test_single_token_targets_give_the_same_update_for_both_objectives(tiny):
    kw = dict(lr=5e-3, num_steps=4, norm_constraint=1e-2)
    a = ft.edit(tiny, FACTS[:1], layers=0, hparams=FTHyperParams(objective="target_new", **kw))
    b = ft.edit(tiny, FACTS[:1], layers=0, hparams=FTHyperParams(objective="prompt_last", **kw))
    assert len(tiny.encode_target(FACTS[0].new_continuation)) == 1
    for k in a.deltas:
        torch.testing.assert_close(a.deltas[k], b.deltas[k], atol=1e-7, rtol=0)


def test_unconstrained_and_multi_layer(tiny_llama):
    hp = FTHyperParams(lr=1e-3, num_steps=2, norm_constraint=None)
    r = ft.edit(tiny_llama, FACTS[:2], layers=[3, 1], hparams=hp)
    assert r.layers == [1, 3]
    assert set(r.deltas) == {tiny_llama.arch.mlp_out_name(1), tiny_llama.arch.mlp_out_name(3)}
    assert max(float(d.abs().max()) for d in r.deltas.values()) > 0


def test_failure_leaves_weights_untouched(tiny_gpt2, monkeypatch):
    snap = _snapshot(tiny_gpt2)
    calls = {"n": 0}
    real = ft._batch_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "_batch_loss", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        ft.edit(tiny_gpt2, FACTS[:1], layers=1, hparams=FTHyperParams(lr=1e-2, num_steps=5))
    for k, v in tiny_gpt2.named_parameters().items():
        assert torch.equal(v, snap[k])
        assert not v.requires_grad


def test_default_hparams_and_bad_input(tiny_gpt2, tiny_llama):
    assert FTHyperParams.for_model(tiny_gpt2).layer == 0
    assert FTHyperParams.for_model(tiny_llama).layer == 3
    assert FTHyperParams.for_model(tiny_gpt2, lr=1.0).lr == 1.0
    with pytest.raises(ValueError, match="out of range"):
        ft.edit(tiny_gpt2, FACTS[:1], layers=7)
    with pytest.raises(ValueError, match="'bogus' is not valid"):
        ft.edit(tiny_gpt2, FACTS[:1], layers="bogus")
    with pytest.raises(ValueError, match="no requests"):
        ft.edit(tiny_gpt2, [], layers=0)
    with pytest.raises(ValueError, match="Fact objects"):
        ft.edit(tiny_gpt2, [{"subject": "x"}], layers=0)
    with pytest.raises(ValueError, match="objective"):
        FTHyperParams(objective="nope")
    with pytest.raises(ValueError, match="norm_constraint"):
        FTHyperParams(norm_constraint=0.0)
    with pytest.raises(ValueError, match="layers is empty"):
        ft.edit(tiny_gpt2, FACTS[:1], layers=[])
