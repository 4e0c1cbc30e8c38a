"""Plain-tensor Llama blocks (models/plain.py) compute what the bridge's blocks compute."""

from __future__ import annotations

import pytest
import torch

from knowscope.models.blocks import PrefixKV, additive_mask, final_logits, run_block
from knowscope.models.plain import PlainUnavailable, plain_blocks


def _inputs(model, batch=3, n_pos=4, prefix=5, seed=0):
    """A residual stream, per-row positions after a cached prefix of different lengths, and the mask."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, n_pos, model.arch.d_model, generator=gen)
    starts = torch.tensor([prefix, 2, 4])[:batch]  # row r sees the first starts[r] prefix keys
    positions = starts[:, None] + torch.arange(n_pos)[None, :]
    j = torch.arange(prefix)
    i = torch.arange(n_pos)
    see_prefix = (j[None, :] < starts[:, None])[:, None, :].expand(batch, n_pos, prefix)
    see_own = (i[None, :] <= i[:, None])[None].expand(batch, n_pos, n_pos)
    mask = additive_mask(torch.cat([see_prefix, see_own], dim=-1), h.dtype)
    shape = (batch, model.arch.n_kv_heads, prefix, model.arch.d_head)
    past = (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    return h, positions, mask, past


def test_plain_blocks_equal_the_bridges_blocks_values_and_gradients(tiny_llama):
    model = tiny_llama
    blocks = plain_blocks(model, 1)
    h, positions, mask, past = _inputs(model)
    a = h.clone().requires_grad_(True)
    b = h.clone().requires_grad_(True)
    want, got = a, b
    rotary = blocks.rotary(h, positions)
    for layer in range(1, model.arch.n_layers):
        want = run_block(model, layer, want, cache=PrefixKV(*past), position_ids=positions, attention_mask=mask)
        got = blocks.run(layer, got, rotary, mask, past)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want_logits = final_logits(model, want[:, -1])
    got_logits = blocks.logits(got[:, -1])
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    weights = torch.randn(want_logits.shape, generator=torch.Generator().manual_seed(1))
    (want_logits * weights).sum().backward()
    (got_logits * weights).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
    assert float(a.grad.abs().max()) > 0


def test_plain_blocks_read_the_live_weights(tiny_llama):
    """Built once, they see an edit applied to the model afterwards (no copies of the weights)."""
    model = tiny_llama
    blocks = plain_blocks(model, 1)
    h, positions, mask, past = _inputs(model, seed=2)
    rotary = blocks.rotary(h, positions)
    before = blocks.run(1, h, rotary, mask, past)
    weight = model.mlp_out_weight(1)
    with torch.no_grad():
        weight.mul_(2.0)
    try:
        after = blocks.run(1, h, rotary, mask, past)
        want = run_block(model, 1, h, cache=PrefixKV(*past), position_ids=positions, attention_mask=mask)
    finally:
        with torch.no_grad():
            weight.div_(2.0)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)


def test_models_that_are_not_plain_llama_are_refused_with_the_reason(tiny_gpt2):
    with pytest.raises(PlainUnavailable, match="rotary"):
        plain_blocks(tiny_gpt2, 0)
