"""Activation shift on tiny models: zero before the edited layer, nonzero after, session untouched."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing.session import EditResult, EditSession
from knowscope.probes import ActivationShift, activation_shift, compare_models

PROMPTS = ["The capital of France is", "Bees make"]


def _edit(model, layer: int) -> EditResult:
    name = model.arch.mlp_out_name(layer)
    w = model.named_parameters()[name]
    g = torch.Generator().manual_seed(0)
    return EditResult(method="test", deltas={name: 0.05 * torch.randn(w.shape, generator=g)},
                      fingerprint=model.fingerprint, layers=[layer])


def test_shift_starts_at_the_edited_layer(tiny, tmp_path):
    layer = 2
    session = EditSession(tiny)
    snap = {n: p.detach().clone() for n, p in tiny.named_parameters().items()}
    shift = activation_shift(session, PROMPTS, _edit(tiny, layer))
    for n, p in tiny.named_parameters().items():
        assert torch.equal(p, snap[n]), n
    resid = shift.by_layer("resid")
    assert float(resid[:layer].abs().max()) == 0.0
    assert float(resid[layer]) > 0 and float(shift.by_layer("mlp")[layer]) > 0
    assert float(shift.by_layer("attn")[: layer + 1].abs().max()) == 0.0  # attention before/at L sees old input
    assert shift.top_layers(1, "mlp", "norm")[0] >= layer
    # cosine is 1 where nothing moved (real positions), masked positions are 0
    assert torch.allclose(shift.cosine["resid"][:layer][:, shift.mask], torch.ones(1), atol=1e-5)
    back = ActivationShift.load(shift.save(tmp_path / "shift"))
    assert torch.equal(back.norm["resid"], shift.norm["resid"]) and back.tokens == shift.tokens
    shift.figure()
    shift.figure(prompt=0)


def test_session_edits_and_model_comparison(tiny_llama):
    session = EditSession(tiny_llama)
    session.apply(_edit(tiny_llama, 1))
    shift = activation_shift(session, PROMPTS)
    assert shift.meta["n_edits"] == 1 and float(shift.by_layer("resid")[1]) > 0
    session.rollback()
    same = compare_models(tiny_llama, tiny_llama, PROMPTS)
    assert float(same.by_layer("resid").abs().max()) == 0.0
    with pytest.raises(ValueError, match="no prompts"):
        compare_models(tiny_llama, tiny_llama, [])
