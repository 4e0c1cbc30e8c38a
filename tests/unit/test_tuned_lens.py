"""Tuned lens on tiny models: identity = logit lens exactly, training lowers held-out KL, save/load, fingerprints."""

from __future__ import annotations

import pytest
import torch

from knowscope.facts import Fact
from knowscope.probes.lens import fact_readout, lens, logit_lens
from knowscope.probes.tuned_lens import (
    TunedLens,
    collect_residuals,
    fit_translators,
    lens_quality,
    train_tuned_lens,
    tuned_lens,
)
from knowscope.results import load_result

PROMPT = "The capital of France is"
CORPUS = ("The Eiffel Tower is located in the city of Paris. Tokyo is the capital of Japan. "
          "Lionel Messi plays soccer and Michael Jordan played basketball. ") * 200


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KNOWSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(CORPUS)
    return str(path)


def test_identity_translators_are_the_logit_lens_exactly(tiny):
    plain = logit_lens(tiny, PROMPT, targets=[" Paris"], k=4)
    same = lens(tiny, PROMPT, targets=[" Paris"], k=4, tuned=TunedLens.identity(tiny))
    assert torch.equal(plain.top_ids, same.top_ids)
    torch.testing.assert_close(plain.top_probs, same.top_probs, rtol=0, atol=1e-7)
    assert torch.equal(plain.target_ranks, same.target_ranks)
    assert same.meta["lens"] == "tuned" and plain.meta["lens"] == "logit"


def test_translate_is_the_affine_map_per_layer(tiny_llama):
    lens_ = TunedLens.identity(tiny_llama)
    n, d = lens_.n_layers, tiny_llama.arch.d_model
    lens_.weight = torch.randn(n, d, d) * 0.1
    lens_.bias = torch.randn(n, d)
    h = torch.randn(n, 3, 4, d)
    out = lens_.translate(h)
    for L in (0, n - 1):  # plain reference: h + A h + b at each layer
        ref = h[L] + torch.einsum("ijd,ed->ije", h[L], lens_.weight[L]) + lens_.bias[L]
        torch.testing.assert_close(out[L], ref, rtol=1e-5, atol=1e-5)


def test_training_lowers_held_out_kl_and_keeps_the_last_layer(tiny_llama, corpus):
    train = collect_residuals(tiny_llama, corpus, 1024, seq_len=32, batch_size=8)
    held = collect_residuals(tiny_llama, corpus, 256, seq_len=32, batch_size=8, skip_batches=5)
    assert train.shape == (1024, tiny_llama.arch.n_layers, tiny_llama.arch.d_model)
    flags = [p.requires_grad for p in tiny_llama.hf.parameters()]
    lens_, losses = fit_translators(tiny_llama, train, steps=60, batch_tokens=64, lr=3e-3)
    assert losses[-1] < losses[0]
    q = lens_quality(tiny_llama, lens_, held)
    last = tiny_llama.arch.n_layers - 1
    assert q.kl_logit[last] == pytest.approx(0, abs=1e-5) and q.kl_tuned[last] == pytest.approx(0, abs=1e-5)
    assert q.top1_tuned[last] == 1.0
    for layer in range(last):  # held-out KL lower than the logit lens at every layer but the last
        assert q.kl_tuned[layer] < 0.9 * q.kl_logit[layer], q.table()
    assert q.layers_not_better() == []
    assert torch.count_nonzero(lens_.weight[last]) == 0 and torch.count_nonzero(lens_.bias[last]) == 0
    assert [p.requires_grad for p in tiny_llama.hf.parameters()] == flags  # restored as they were


def test_save_load_identical_and_another_model_refused(tiny_gpt2, tiny_llama, corpus, cache, tmp_path):
    lens_ = train_tuned_lens(tiny_gpt2, corpus, n_tokens=256, held_out_tokens=64, steps=5, batch_tokens=32,
                             seq_len=32, batch_size=4)
    assert lens_.meta["train_tokens"] == 256 and lens_.meta["held_out_tokens"] == 64
    assert len(lens_.meta["quality"]["kl_tuned"]) == tiny_gpt2.arch.n_layers
    path = lens_.save(tmp_path / "lens")
    back = TunedLens.load(path, tiny_gpt2)
    a = lens(tiny_gpt2, PROMPT, targets=[" Paris"], tuned=lens_)
    b = lens(tiny_gpt2, PROMPT, targets=[" Paris"], tuned=back)
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.top_probs, b.top_probs)
    assert isinstance(load_result(path), TunedLens)
    with pytest.raises(ValueError, match="trained for"):
        TunedLens.load(path, tiny_llama)
    with pytest.raises(ValueError, match="trained for"):
        lens(tiny_llama, PROMPT, tuned=back)
    assert back.quality_figure() is not None


def test_tuned_lens_is_cached_by_fingerprint_and_settings(tiny_gpt2, corpus, cache):
    kwargs = dict(n_tokens=128, held_out_tokens=32, steps=3, batch_tokens=16, seq_len=32)
    first = tuned_lens(tiny_gpt2, corpus, **kwargs)
    second = tuned_lens(tiny_gpt2, corpus, **kwargs)
    assert second.meta["cached"] == first.meta["cached"]
    assert torch.equal(first.weight, second.weight)
    other = tuned_lens(tiny_gpt2, corpus, **{**kwargs, "steps": 4})
    assert other.meta["cached"] != first.meta["cached"]


def test_fact_readout_counts_layers(tiny_llama):
    facts = [Fact(case_id=i, subject=s, prompt="{} is located in", target_true=t, target_new="Rome", relation_id="P1")
             for i, (s, t) in enumerate([("The Eiffel Tower", "Paris"), ("Big Ben", "London")])]
    out = fact_readout(tiny_llama, facts)
    n = tiny_llama.arch.n_layers
    assert out["n_facts"] == 2 and len(out["first_top1_layers"]) == 2
    for first1, first5 in zip(out["first_top1_layers"], out["first_top5_layers"], strict=True):
        assert first5 is None or first1 is None or first5 <= first1  # top-1 implies top-5
    early = [x for x in out["first_top1_layers"] if x is not None and x < n - 1]
    assert out["share_top1_before_last"] == len(early) / 2
    assert out["share_top5_before_last"] >= out["share_top1_before_last"]
    with pytest.raises(ValueError, match="no facts"):
        fact_readout(tiny_llama, [])


def test_lens_cli_trains_reads_facts_and_refuses_bad_input(cache, tmp_path, capsys):
    import json

    from knowscope.cli import main

    common = ["--model", "tiny-llama", "--tuned", "--train-tokens", "256", "--steps", "3"]
    out = tmp_path / "train.json"
    assert main(["lens", *common, "--train", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["kl_by_layer"]) == 4 and data["kl_by_layer"][-1] == pytest.approx(0, abs=1e-5)
    assert "trained and cached" in capsys.readouterr().out
    out = tmp_path / "facts.json"
    assert main(["lens", *common, "--data", "bundled", "--limit", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "loaded from the cache" in capsys.readouterr().out
    assert data["lens"] == "tuned" and data["n_facts"] == 3
    for key in ("share_top1_before_last", "share_top5_before_last", "median_first_top1_layer"):
        assert key in data
    out = tmp_path / "plain.json"
    assert main(["lens", "--model", "tiny-llama", "--data", "bundled", "--limit", "3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["lens"] == "logit"
    assert main(["lens", "--model", "tiny-llama", "--train"]) == 2
    assert "add --tuned" in capsys.readouterr().err
    assert main(["lens", "--model", "tiny-llama"]) == 2
    assert "give --prompt" in capsys.readouterr().err
