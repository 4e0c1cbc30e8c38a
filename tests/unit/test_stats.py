"""Key statistics E[k kᵀ]: exact against a plain per-sequence loop, cached, deterministic."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing.stats import KeyStats, key_stats, layer_stats
from knowscope.texts import generated_batch, source_key, token_batches

CORPUS = (
    "The Eiffel Tower is located in the city of Paris. Tokyo is the capital of Japan. "
    "Lionel Messi plays soccer and Michael Jordan played basketball. The official language of Mexico is Spanish. "
) * 20


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KNOWSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def plain_mom2(model, tokens_list, layer, n_tokens):
    """Reference: one sequence at a time, keys stacked, BOS dropped, first n_tokens kept."""
    keys = []
    for tokens in tokens_list:
        for row in tokens:
            _, cache = model.bridge.run_with_cache(row[None], names_filter=lambda n: n.endswith("mlp.hook_post"))
            keys.append(cache[f"blocks.{layer}.mlp.hook_post"][0, 1:].double())
    K = torch.cat(keys)[:n_tokens]
    return (K.T @ K) / K.shape[0]


@pytest.mark.parametrize("source_kind", ["file", "self"])
def test_key_stats_match_plain_loop(tiny, cache, tmp_path, source_kind):
    if source_kind == "file":
        path = tmp_path / "text.txt"
        path.write_text(CORPUS)
        source = str(path)
    else:
        source = "self"
    n = 70  # not a multiple of the 15 keys per sequence: checks the exact cut
    got = key_stats(tiny, [1, 3], n_tokens=n, source=source, seq_len=16, batch_size=4, progress=False)
    batches = list(token_batches(tiny, source, n, seq_len=16, batch_size=4))
    for layer in (1, 3):
        ref = plain_mom2(tiny, batches, layer, n)
        assert got[layer].n_tokens == n
        torch.testing.assert_close(got[layer].mom2.double(), ref, rtol=1e-5, atol=1e-6)
        # collecting one layer alone gives the same matrix as collecting several in one pass
        alone = layer_stats(tiny, layer, n_tokens=n, source=source, seq_len=16, batch_size=4, cache=False,
                            progress=False)
        torch.testing.assert_close(alone.mom2, got[layer].mom2, rtol=1e-6, atol=1e-7)


def test_cache_hit_returns_identical_tensors(tiny_gpt2, cache):
    first = layer_stats(tiny_gpt2, 2, n_tokens=120, seq_len=16, batch_size=4, progress=False)
    files = list((cache / "stats").rglob("meta.json"))
    assert len(files) == 1 and "L2-n120" in str(files[0].parent.name)
    second = layer_stats(tiny_gpt2, 2, n_tokens=120, seq_len=16, batch_size=4, progress=False)
    assert torch.equal(first.mom2, second.mom2)
    # a different token count is a different cache entry
    layer_stats(tiny_gpt2, 2, n_tokens=60, seq_len=16, batch_size=4, progress=False)
    assert len(list((cache / "stats").rglob("meta.json"))) == 2


def test_generated_text_is_seeded_and_cached(tiny_llama, cache):
    a = generated_batch(tiny_llama, 0, 3, 12, seed=5)
    for f in (cache / "stats").rglob("*.safetensors"):
        f.unlink()
    b = generated_batch(tiny_llama, 0, 3, 12, seed=5)
    c = generated_batch(tiny_llama, 1, 3, 12, seed=5)
    assert torch.equal(a, b)
    assert a.shape == (3, 12) and (a[:, 0] == tiny_llama.tokenizer.bos_token_id).all()
    assert not torch.equal(a, c)


def test_stats_save_load_and_psd(tiny_gpt2, cache, tmp_path):
    st = layer_stats(tiny_gpt2, 0, n_tokens=100, seq_len=16, batch_size=4, progress=False)
    st.save(tmp_path / "st")
    back = KeyStats.load(tmp_path / "st")
    assert torch.equal(back.mom2, st.mom2) and back.layer == 0 and back.fingerprint == tiny_gpt2.fingerprint
    assert torch.allclose(st.mom2, st.mom2.T)
    assert st.eigenvalues().min() > -1e-6
    assert st.figure().data


def test_bad_inputs(tiny_gpt2, cache, tmp_path):
    with pytest.raises(ValueError, match="layer 9"):
        key_stats(tiny_gpt2, [9], n_tokens=10)
    with pytest.raises(ValueError, match="n_tokens"):
        key_stats(tiny_gpt2, [0], n_tokens=0)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        key_stats(tiny_gpt2, [0], n_tokens=10, source=str(tmp_path / "nope.txt"))
    short = tmp_path / "short.txt"
    short.write_text("Paris")
    with pytest.raises(ValueError, match="gave no tokens|only"):
        key_stats(tiny_gpt2, [0], n_tokens=1000, source=str(short), progress=False)
    assert source_key("self", 3) == "self-s3" and source_key("hf:wikitext:wikitext-103-raw-v1").startswith("hf-")
