"""The checks the latest-versions lane runs on the default model (``make test-latest``): the demo's
causal trace runs on the fast path and equals the reference loop, and generation with the KV cache
equals generation without it, so a release that silently drops the cache fails here."""

from __future__ import annotations

import torch

from knowscope.circuits import trace
from knowscope.editing.evaluation import generate_texts, ngram_entropy


def test_demo_trace_runs_fast(default_model):
    """The demo's trace (all three kinds) on the fast path; one token of it against the reference loop."""
    prompt, subject = "The official language of Mexico is", "Mexico"
    full = trace(default_model, prompt, subject, target="Spanish", samples=3)
    assert full.method == "fast" and default_model.compat.trace_mode in ("suffix", "full")
    assert full.high_score > 0.3 and full.low_score < 0.5 * full.high_score
    t = full.subject_range[1] - 1
    kw = dict(target="Spanish", kinds=("hidden", "mlp", "attn"), samples=2, seed=3, tokens=[t])
    fast = trace(default_model, prompt, subject, **kw)
    ref = trace(default_model, prompt, subject, method="reference", **kw)
    for kind in ("hidden", "mlp", "attn"):
        assert (fast.scores[kind][t] - ref.scores[kind][t]).abs().max() < 1e-5, kind


def test_cached_generation_equals_uncached_on_the_default_model(default_model):
    tokens = default_model.to_tokens("Lionel Messi is")
    want = tokens
    with torch.no_grad():
        for _ in range(20):  # no cache anywhere: the whole sequence through the bridge at each step
            want = torch.cat([want, default_model.bridge(want)[:, -1].argmax(-1, keepdim=True)], dim=1)
    got = default_model.generate(tokens, max_new_tokens=20, min_new_tokens=20, do_sample=False, eos_token_id=None)
    assert torch.equal(got, want), default_model.tokenizer.decode(got[0])


def test_unedited_fluency_is_that_of_sentences(default_model, bundled_facts):
    """ROME's fluency (n-gram entropy of sampled continuations) of the unedited model: a dropped cache
    gave ~3.5 (one token at a time, word salad), sentences give ~6."""
    prompts = [f.text for f in bundled_facts[::36][:6]]
    texts = generate_texts(default_model, prompts, max_out_len=100, seed=0)
    entropy = sum(ngram_entropy(t) for t in texts) / len(texts)
    assert entropy > 5.0, entropy
