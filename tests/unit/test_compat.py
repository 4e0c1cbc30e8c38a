"""Library drift: the KV cache must reach attention, or knowscope must notice and adapt (knowscope.compat).

transformers 5.24 renamed the decoder layers' cache argument and TransformerLens 4.3's attention
bridge stopped receiving the cache: cached generation silently saw one token at a time. These tests
compare cached with uncached decoding on every lane (locked and latest), so a dropped cache fails
here, and simulate the broken convention to check the fallbacks and ``knowscope doctor``.
"""

from __future__ import annotations

import pytest
import torch

from knowscope import compat
from knowscope.circuits.tracing import ALL_KINDS, trace
from knowscope.editing.evaluation import generate_texts
from knowscope.models import tiny_model

PROMPT = "Lionel Messi plays soccer in"


def _greedy_uncached(model, tokens: torch.Tensor, n_new: int) -> torch.Tensor:
    """Plain greedy decoding: the whole sequence through the bridge at every step, no cache anywhere."""
    for _ in range(n_new):
        logits = model.bridge(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_generation_equals_uncached(family):
    model = tiny_model(family, seed=3, initializer_range=0.2)
    assert model.compat.kv_cache, model.compat.notes
    tokens = model.to_tokens([PROMPT, "The Eiffel Tower is in"])[:1]
    want = _greedy_uncached(model, tokens, 16)
    got = model.generate(tokens, max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None)
    assert torch.equal(got, want)
    # the fluency metric's generation (greedy) decodes to the same text
    text = generate_texts(model, [PROMPT], max_out_len=tokens.shape[1] - 1 + 16, top_k=None)[0]
    assert text == model.tokenizer.decode(want[0].tolist(), skip_special_tokens=True)


def test_sampled_generation_is_seeded_and_full_length(tiny_llama):
    a = generate_texts(tiny_llama, [PROMPT], n_gen_per_prompt=3, max_out_len=20, seed=5)
    b = generate_texts(tiny_llama, [PROMPT], n_gen_per_prompt=3, max_out_len=20, seed=5)
    c = generate_texts(tiny_llama, [PROMPT], n_gen_per_prompt=3, max_out_len=20, seed=6)
    assert a == b and a != c and len(a) == 3
    # ROME's generate_fast runs every row to the length limit (EOS does not stop a row)
    toks = tiny_llama.to_tokens(PROMPT).repeat(2, 1)
    out = tiny_llama.generate(toks, max_new_tokens=12, do_sample=True, top_k=5, eos_token_id=None)
    assert out.shape == (2, toks.shape[1] + 12)


def test_cache_keyword_read_from_signature(tiny_llama):
    layer = tiny_llama.bridge.blocks[0].original_component
    kw = compat.cache_keyword(layer)
    assert kw in compat.KNOWN_CACHE_KEYWORDS

    class Old(torch.nn.Module):
        def forward(self, hidden_states, layer_past=None, use_cache=False):
            return hidden_states

    class Annotated(torch.nn.Module):
        def forward(self, hidden_states, kv: compat.Any = None, store: "Cache | None" = None):  # noqa: F821
            return hidden_states

    class NoCache(torch.nn.Module):
        def forward(self, hidden_states):
            return hidden_states

    assert compat.cache_keyword(Old()) == "layer_past"
    assert compat.cache_keyword(Annotated()) == "store"
    assert compat.cache_keyword(NoCache()) is None


def _drop_cache(module, args, kwargs):
    """Simulates the broken convention: the attention never sees a cache, under any name."""
    return args, {k: v for k, v in kwargs.items() if not compat.is_cache_like(v) and k != "past_key_values"}


def _break_cache(model) -> None:
    for blk in model.bridge.blocks:
        blk.attn.register_forward_pre_hook(_drop_cache, with_kwargs=True)


def test_broken_cache_is_detected_and_generation_stays_correct():
    model = tiny_model("llama", seed=3, initializer_range=0.2)
    _break_cache(model)
    tokens = model.to_tokens(PROMPT)
    # what the drift did: cached decoding silently differs from uncached
    assert compat.probe_kv_cache(model.hf, tokens) > 1e-3
    found = compat.detect(model.bridge, model.hf, tokens)
    assert not found.kv_cache and found.notes
    model.compat = found
    want = _greedy_uncached(model, tokens, 10)
    got = model.generate(tokens, max_new_tokens=10, min_new_tokens=10, do_sample=False, eos_token_id=None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fast_trace_falls_back_to_full_passes_when_cache_is_dropped(family):
    model = tiny_model(family, seed=1, initializer_range=0.3,
                       **({"n_layer": 3} if family == "gpt2" else {"num_hidden_layers": 3}))
    _break_cache(model)
    kw = dict(samples=3, window=2, seed=7, kinds=ALL_KINDS)
    ref = trace(model, PROMPT, "Lionel Messi", method="reference", **kw)
    fast = trace(model, PROMPT, "Lionel Messi", **kw)
    assert model.compat.trace_mode == "full"
    for kind in ALL_KINDS:
        assert (fast.scores[kind] - ref.scores[kind]).abs().max().item() <= 1e-5
    # forcing the cache route on this model refuses loudly instead of returning wrong numbers
    with pytest.raises(RuntimeError, match="reference"):
        trace(model, PROMPT, "Lionel Messi", fast_mode="suffix", **kw)


def test_fast_trace_refuses_when_no_partial_forward_reproduces_the_bridge(monkeypatch):
    from knowscope.circuits.tracing import partial as tracing

    model = tiny_model("gpt2", seed=2)
    real = tracing._block

    def wrong(model_, layer, h, start, cache):
        return real(model_, layer, h, start, cache) * 1.5

    monkeypatch.setattr(tracing, "_block", wrong)
    with pytest.raises(RuntimeError) as err:
        trace(model, PROMPT, "Lionel Messi", samples=2)
    msg = str(err.value)
    assert "method='reference'" in msg and "requirements.lock" in msg and "transformers" in msg
