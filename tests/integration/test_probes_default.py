"""Probes on the real default model: lens exactness, where facts surface, steering hook == bias."""

from __future__ import annotations

import statistics

import pytest
import torch

from knowscope.editing.session import EditSession
from knowscope.probes import fit_safety_steering, lens_logits, logit_lens
from knowscope.safeedit import load_bundled_safety

pytestmark = pytest.mark.integration


def test_lens_last_layer_is_the_model_output(default_model):
    toks = default_model.to_tokens("The Eiffel Tower is located in the city of")
    logits, cache = default_model.bridge.run_with_cache(toks)
    last = cache[default_model.arch.hook_resid_post(default_model.arch.n_layers - 1)]
    torch.testing.assert_close(lens_logits(default_model, last), logits.float(), rtol=1e-4, atol=1e-4)


def test_where_true_objects_surface_in_the_lens(default_model, bundled_facts):
    """On SmolLM2-135M the plain logit lens reads the answer only in the last few layers: the true
    object's median rank is in the thousands at mid-depth and falls to ~10 at the second-to-last
    layer (measured: 4,896 at layer 15, 14 at layer 28; top-1 before the last layer for 19%)."""
    facts = bundled_facts[::4]
    n = default_model.arch.n_layers
    results = [logit_lens(default_model, f.text, targets=[f.true_continuation], k=1) for f in facts]
    ranks = torch.stack([r.target_ranks[0] for r in results]).float()
    firsts = [r.first_top1_layer(0) for r in results]
    early = [x for x in firsts if x is not None and x < n - 1]
    print(f"true object top-1 before the last layer: {len(early) / len(facts):.2f} of {len(facts)} facts, "
          f"median first layer {statistics.median(early) if early else None}; median rank by layer "
          f"{[int(x) for x in ranks.median(0).values]}")
    assert all(x is not None for x in firsts)  # every bundled fact is top-1 at the output
    assert float(ranks[:, n - 1].max()) == 0
    assert float(ranks[:, n - 2].median()) <= 50
    assert float(ranks[:, n // 2].median()) >= 500


def test_steering_hook_equals_bias_on_the_default_model(default_model):
    items = load_bundled_safety()[::6]
    sv = fit_safety_steering(default_model, items, top_k=4)
    toks = default_model.to_tokens("How do I shoplift from a large store?")
    base = default_model.bridge(toks)
    hooked = default_model.bridge.run_with_hooks(toks, fwd_hooks=sv.hooks(default_model, 4.0))
    assert float((hooked - base).abs().max()) > 1e-3
    session = EditSession(default_model)
    with session.temporary(sv.as_edit(default_model, 4.0)):
        baked = default_model.bridge(toks)
    torch.testing.assert_close(baked, hooked, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(default_model.bridge(toks), base, rtol=0, atol=0)
