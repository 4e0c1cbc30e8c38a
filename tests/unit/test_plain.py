"""Plain-tensor Llama blocks (models/plain.py) compute what the bridge's blocks compute."""

from __future__ import annotations

import pytest
import torch

from knowscope.models.blocks import PrefixKV, additive_mask, final_logits, run_block
from knowscope.models.plain import PlainBlocks, PlainUnavailable


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
    blocks = PlainBlocks(model, 1)
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
    blocks = PlainBlocks(model, 1)
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
        PlainBlocks(tiny_gpt2, 0)


def test_biases_and_norm_weights_are_used():
    """A Llama with q/k/v/o and MLP biases and non-unit norm weights (as trained models have): plain =
    bridge, so neither may be dropped."""
    from knowscope.models import tiny_model

    model = tiny_model("llama", seed=3, attention_bias=True, mlp_bias=True)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            if "norm" in name or p.ndim == 1:  # norm weights and biases
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen) if "norm" in name
                        else 0.1 * torch.randn(p.shape, generator=gen))
    assert model.bridge.blocks[1].attn.q.original_component.bias is not None
    blocks = PlainBlocks(model, 1)
    h, positions, mask, past = _inputs(model, seed=5)
    rotary = blocks.rotary(h, positions)
    want, got = h, h
    for layer in range(1, model.arch.n_layers):
        want = run_block(model, layer, want, cache=PrefixKV(*past), position_ids=positions, attention_mask=mask)
        got = blocks.run(layer, got, rotary, mask, past)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocks.logits(got[:, -1]), final_logits(model, want[:, -1]), rtol=1e-5, atol=1e-5)


def test_hooks_and_rerouting_settings_rule_plain_out_for_now(tiny_llama):
    """Plain code fires no hooks: a hook on a block it would replace (or on the final norm) and the
    bridge's split-input settings make it step aside (PlainNotNow), until they are gone."""
    from knowscope.models.plain import PlainNotNow

    hooks = tiny_llama.bridge.hook_dict
    for name in ("blocks.2.hook_resid_post", "blocks.1.attn.hook_pattern", "ln_final.hook_normalized"):
        handle = hooks[name].register_forward_hook(lambda *args: None)
        try:
            with pytest.raises(PlainNotNow, match="hook"):
                PlainBlocks(tiny_llama, 1)
        finally:
            handle.remove()
    handle = hooks["blocks.0.hook_resid_post"].register_forward_hook(lambda *args: None)
    try:
        PlainBlocks(tiny_llama, 1)  # below the first plain block: not replaced, not in the way
    finally:
        handle.remove()
    cfg = tiny_llama.bridge.cfg
    old = getattr(cfg, "use_split_qkv_input", False)
    cfg.use_split_qkv_input = True
    try:
        with pytest.raises(PlainNotNow, match="use_split_qkv_input"):
            PlainBlocks(tiny_llama, 1)
    finally:
        cfg.use_split_qkv_input = old
    PlainBlocks(tiny_llama, 1)
