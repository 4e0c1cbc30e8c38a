"""Loading, the architecture description and the fingerprint, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from knowscope.models import ModelLoadError, build_tiny_model, load_model, tiny_model


def test_tiny_models_describe_their_architecture(tiny_gpt2, tiny_llama):
    g, ll = tiny_gpt2.arch, tiny_llama.arch
    assert (g.family, g.n_layers, g.d_model, g.mlp_out_layout) == ("gpt2", 4, 64, "in_out")
    assert (ll.family, ll.n_layers, ll.n_heads, ll.n_kv_heads, ll.mlp_out_layout) == ("llama", 4, 4, 2, "out_in")
    assert g.mlp_out_name(2) == "transformer.h.2.mlp.c_proj.weight"
    assert ll.mlp_out_name(2) == "model.layers.2.mlp.down_proj.weight"
    # GPT-2's Conv1D stores [d_mlp, d_model]; Llama's Linear [d_model, d_mlp]; the matrix view is [d_model, d_mlp]
    assert tuple(tiny_gpt2.mlp_out_weight(0).shape) == (g.d_mlp, g.d_model)
    assert tuple(tiny_llama.mlp_out_weight(0).shape) == (ll.d_model, ll.d_mlp)
    for m in (tiny_gpt2, tiny_llama):
        assert tuple(m.mlp_out_matrix(1).shape) == (m.arch.d_model, m.arch.d_mlp)


def test_layer_out_of_range_is_a_clear_error(tiny_llama):
    with pytest.raises(ValueError, match="out of range.*0..3"):
        tiny_llama.arch.mlp_out_name(4)


def test_mlp_key_and_value_hooks_match_the_output_projection(tiny):
    """The MLP value (hook_mlp_out) is the output projection applied to the MLP key (mlp.hook_post)."""
    toks = tiny.to_tokens("The capital of France is")
    layer = 1
    _, cache = tiny.bridge.run_with_cache(toks)
    key = cache[tiny.arch.hook_mlp_key(layer)][0]
    value = cache[tiny.arch.hook_mlp_out(layer)][0]
    module = tiny.bridge.blocks[layer].mlp.out.original_component
    bias = module.bias if getattr(module, "bias", None) is not None else 0.0
    expected = key @ tiny.mlp_out_matrix(layer).T + bias
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=1e-5)


def test_editing_the_hf_weight_changes_the_bridge_forward(tiny_llama):
    toks = tiny_llama.to_tokens("Paris is the capital")
    before = tiny_llama(toks).detach().clone()
    w = tiny_llama.mlp_out_weight(0)
    saved = w.detach().clone()
    with torch.no_grad():
        w.add_(torch.randn_like(w) * 0.5)
    try:
        assert (tiny_llama(toks) - before).abs().max() > 1e-3
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert torch.equal(tiny_llama(toks), before)


def test_bos_is_prepended(tiny_gpt2):
    toks = tiny_gpt2.to_tokens("Paris")
    assert int(toks[0, 0]) == tiny_gpt2.tokenizer.bos_token_id


def test_bridge_matches_hf_logits(tiny):
    toks = tiny.to_tokens("The Eiffel Tower is in")
    torch.testing.assert_close(tiny(toks), tiny.hf(toks).logits, atol=1e-5, rtol=1e-5)


def test_fingerprint_is_stable_and_distinguishes_models():
    a = tiny_model("gpt2")
    b = tiny_model("gpt2")
    c = tiny_model("gpt2", seed=1)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert a.fingerprint != tiny_model("llama").fingerprint


def test_fingerprint_survives_in_place_edits(tiny_gpt2):
    fp = tiny_gpt2.fingerprint
    w = tiny_gpt2.mlp_out_weight(0)
    saved = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    try:
        assert tiny_gpt2.fingerprint == fp  # names the base model, taken at load time
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_load_local_directory(tmp_path):
    path = build_tiny_model("llama", num_hidden_layers=2)
    m = load_model(str(path), device="cpu")
    assert m.arch.n_layers == 2
    assert m.name == path.name


def test_unknown_or_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_top_k_and_last_logits_agree(tiny_llama):
    prompts = ["The capital of France is", "Paris"]
    batched = tiny_llama.last_logits(prompts)
    for i, p in enumerate(prompts):
        single = tiny_llama(tiny_llama.to_tokens(p))[0, -1]
        torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)
    top = tiny_llama.top_k("The capital of France is", 3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_encode_target_rejects_empty(tiny_gpt2):
    with pytest.raises(ValueError, match="empty"):
        tiny_gpt2.encode_target("  ")


def test_subject_span_is_one_rule_for_templates_and_texts(tiny):
    text = "The Eiffel Tower is in Paris"
    span = tiny.subject_span(text, "Eiffel Tower")
    assert span == tiny.subject_span("The {} is in Paris", "Eiffel Tower")
    toks = tiny.to_tokens(text)[0]
    assert tiny.tokenizer.decode(toks[span[0]:span[1]]).strip() == "Eiffel Tower"
    # the tokens just outside the span carry no character of the subject
    assert "Eiffel" not in tiny.tokenizer.decode(toks[: span[0]])
    assert "Tower" not in tiny.tokenizer.decode(toks[span[1]:])
    # a subject boundary inside a token keeps the whole token (character overlap, as ROME)
    a, b = tiny.subject_span(text, "Eiffel Tow")
    assert a == span[0] and tiny.tokenizer.decode(toks[a:b]).strip().startswith("Eiffel Tow")
    for bad, match in [("", "empty"), ("Louvre", "does not occur")]:
        with pytest.raises(ValueError, match=match):
            tiny.subject_span(text, bad)
    with pytest.raises(ValueError, match="exactly one"):
        tiny.subject_span("{} and {}", "Paris")
