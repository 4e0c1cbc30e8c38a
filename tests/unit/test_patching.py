"""Generic activation patching on tiny models: batched sweep == plain per-cell loop, invariants, errors."""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits.patching import (
    activation_patching,
    cache_activations,
    logit_diff_metric,
    prob_metric,
    run_with_patches,
)

SOURCE = "The Eiffel Tower is in Paris"
TARGET = "The Colosseum Tower is in Rome"



def _same_length_prompts(model):
    src, tgt = model.to_tokens(SOURCE), model.to_tokens(TARGET)
    n = min(src.shape[1], tgt.shape[1])
    return src[:, :n], tgt[:, :n]


@torch.no_grad()
def test_sweep_equals_plain_loop(tiny):
    src, tgt = _same_length_prompts(tiny)
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.2.hook_attn_out"]
    metric = logit_diff_metric(5, 7)
    res = activation_patching(tiny, src, tgt, names, positions="each", metric=metric, max_rows=5)
    _, acts = cache_activations(tiny, src, names)
    for i, name in enumerate(names):
        for p in range(src.shape[1]):
            def hook(act, hook, p=p, name=name):
                act = act.clone()
                act[:, p] = acts[name][:, p]
                return act

            logits = tiny.bridge.run_with_hooks(tgt, fwd_hooks=[(name, hook)])
            assert res.effects[i, p].item() == pytest.approx(metric(logits)[0].item(), abs=1e-5)


@torch.no_grad()
def test_patching_everything_gives_the_source_run(tiny):
    src, tgt = _same_length_prompts(tiny)
    res = activation_patching(tiny, src, tgt, ["blocks.0.hook_resid_pre", "hook_embed"], positions="all")
    assert res.effects.shape == (2, 1)
    assert res.effects[0, 0].item() == pytest.approx(res.source_metric, abs=1e-6)
    if tiny.arch.positional == "rotary":  # with learned position embeddings, hook_embed is only the token part
        assert res.effects[1, 0].item() == pytest.approx(res.source_metric, abs=1e-6)
    # patching a position after the last one read changes nothing: the last position is what is scored
    each = activation_patching(tiny, src, tgt, ["blocks.1.hook_resid_post"], positions=[0])
    assert each.effects[0, 0].item() == pytest.approx(each.target_metric, abs=1e-5)
    # normalized: 1 = the source's metric
    assert res.normalized()[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert len(res.figure().data) == 1


@torch.no_grad()
def test_run_with_patches_rows_and_heads(tiny_llama):
    toks = tiny_llama.to_tokens(SOURCE).expand(2, -1)
    _, acts = cache_activations(tiny_llama, toks[:1], ["blocks.1.attn.hook_z"])
    z = acts["blocks.1.attn.hook_z"]  # [1, pos, heads, d_head]
    metric = prob_metric(3)
    base = run_with_patches(tiny_llama, toks, [], metric)
    zeroed = run_with_patches(tiny_llama, toks, [("blocks.1.attn.hook_z", [1], [toks.shape[1] - 1],
                                                  torch.zeros_like(z[:, -1]))], metric)
    assert zeroed[0].item() == pytest.approx(base[0].item(), abs=1e-7)  # row 0 untouched
    assert zeroed[1].item() != pytest.approx(base[1].item(), abs=1e-9)


def test_errors(tiny_gpt2):
    with pytest.raises(ValueError, match="different token lengths"):
        activation_patching(tiny_gpt2, "The Eiffel Tower", "The tower", ["blocks.0.hook_resid_pre"])
    src, tgt = _same_length_prompts(tiny_gpt2)
    with pytest.raises(ValueError, match="unknown hook point"):
        activation_patching(tiny_gpt2, src, tgt, ["blocks.99.hook_resid_pre"])
    with pytest.raises(ValueError, match="out of range"):
        activation_patching(tiny_gpt2, src, tgt, ["blocks.0.hook_resid_pre"], positions=[100])
    with pytest.raises(ValueError, match="positions must be"):
        activation_patching(tiny_gpt2, src, tgt, ["blocks.0.hook_resid_pre"], positions="some")
