"""Logit lens, linear probes and steering on tiny models (exactness against plain references)."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing.session import EditSession
from knowscope.probes.lens import LogitLensResult, lens_logits, logit_lens
from knowscope.probes.linear import LinearProbe, ProbeReport, fit_probe, probe_layers
from knowscope.probes.steering import SteeringVector, fit_steering

PROMPT = "The capital of France is"


def test_lens_last_layer_equals_model_logits(tiny):
    toks = tiny.to_tokens(PROMPT)
    logits, cache = tiny.bridge.run_with_cache(toks)
    last = cache[tiny.arch.hook_resid_post(tiny.arch.n_layers - 1)]
    torch.testing.assert_close(lens_logits(tiny, last), logits.float(), rtol=1e-5, atol=1e-5)
    res = logit_lens(tiny, PROMPT, targets=[" Paris"], k=3)
    assert res.top_ids.shape == (tiny.arch.n_layers, toks.shape[1], 3)
    assert int(res.top_ids[-1, -1, 0]) == int(logits[0, -1].argmax())
    assert res.target_ranks.shape == (1, tiny.arch.n_layers)


def test_lens_norm_is_computed_per_layer(tiny_llama):
    """RMSNorm on layer L's own vector (a plain reference), not the last layer's cached scale."""
    toks = tiny_llama.to_tokens(PROMPT)
    _, cache = tiny_llama.bridge.run_with_cache(toks)
    x = cache[tiny_llama.arch.hook_resid_post(1)][0].float()
    norm = tiny_llama.hf.model.norm
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight.float()
    ref_logits = ref @ tiny_llama.hf.lm_head.weight.float().T
    torch.testing.assert_close(lens_logits(tiny_llama, x), ref_logits, rtol=1e-4, atol=1e-4)


def test_lens_result_roundtrip(tiny_gpt2, tmp_path):
    res = logit_lens(tiny_gpt2, PROMPT, targets=[" Paris", " Rome"])
    back = LogitLensResult.load(res.save(tmp_path / "lens"))
    assert torch.equal(back.top_ids, res.top_ids) and back.top_tokens == res.top_tokens
    assert back.to_dict()["targets"][1]["target"] == " Rome"
    res.figure()
    with pytest.raises(ValueError, match="non-empty"):
        logit_lens(tiny_gpt2, "")


def test_lens_tokens_are_decoded_text_with_visible_spaces(tiny_llama, tmp_path):
    """Each id is decoded on its own: no byte-level BPE pieces (Ġ, Ċ) in the result, its dict, its
    saved form or its figure; spaces and line breaks are drawn visibly."""
    import json

    from knowscope.models.tokens import piece_text, visible

    prompt = "The Eiffel Tower is in\nthe city of"
    res = logit_lens(tiny_llama, prompt, targets=[" Paris"])
    assert "".join(res.tokens[1:]) == prompt  # after BOS, the decoded tokens spell the prompt
    assert " Eiffel" in res.tokens and "\n" in res.tokens
    dumped = json.dumps(res.to_dict(), ensure_ascii=False)
    assert not any(ch in dumped for ch in "ĠĊ")
    fig = res.figure()
    labels = " ".join(fig.data[0].x)
    assert "␣Eiffel" in labels and "↵" in labels and "Ġ" not in labels
    # a lens saved before tokens were decoded (pieces) reads back as text
    saved = res.save(tmp_path / "lens")
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["data"]["token_text"] == "decoded"
    res.tokens = tiny_llama.tokenizer.convert_ids_to_tokens(tiny_llama.to_tokens(prompt)[0].tolist())
    assert "ĠEiffel" in res.tokens
    res.meta = {}
    legacy = res.save(tmp_path / "legacy")
    raw = json.loads((legacy / "meta.json").read_text())
    raw["data"].pop("token_text")
    (legacy / "meta.json").write_text(json.dumps(raw))
    back = LogitLensResult.load(legacy)
    assert "".join(back.tokens[1:]) == prompt
    assert piece_text("ĠParis") == " Paris" and piece_text("Âł") == "\u00a0" and piece_text("Paris") == "Paris"
    assert visible(" a\nb\u00a0") == "␣a↵b⍽"


def _separable(seed=0, n=40, d=16, gap=1.5):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    return torch.randn(n, d, generator=g) + gap * u, torch.randn(n, d, generator=g) - gap * u, u


@pytest.mark.parametrize("method", ["mean_diff", "pca", "logistic"])
def test_probes_find_the_planted_direction(method, tmp_path):
    pos, neg, u = _separable()
    probe = fit_probe(pos, neg, method)
    assert float(probe.direction @ u) > 0.8
    assert probe.accuracy >= 0.8 and probe.train_accuracy >= 0.85
    assert probe.predict(pos).float().mean() > 0.8 and (~probe.predict(neg)).float().mean() > 0.8
    back = LinearProbe.load(probe.save(tmp_path / "p"))
    assert torch.equal(back.direction, probe.direction) and back.threshold == probe.threshold


def test_mean_diff_probe_matches_formula():
    pos, neg, _ = _separable(1)
    probe = fit_probe(pos, neg, "mean_diff", test_fraction=0)
    d = pos.mean(0) - neg.mean(0)
    torch.testing.assert_close(probe.direction, d / d.norm())
    mid = 0.5 * ((pos @ probe.direction).mean() + (neg @ probe.direction).mean())
    assert probe.threshold == pytest.approx(float(mid), rel=1e-5)
    with pytest.raises(ValueError, match="method"):
        fit_probe(pos, neg, "svm")


def test_probe_layers_and_fingerprint(tiny_gpt2, tiny_llama, tmp_path):
    pos = ["Paris is in France", "Rome is in Italy", "Berlin is in Germany", "Madrid is in Spain", "Oslo is in Norway"]
    neg = ["two plus two is", "the cat sat on", "one two three", "red green blue", "up and down and"]
    report = probe_layers(tiny_gpt2, pos, neg, test_fraction=0.4)
    assert set(report.accuracy) == {"mean_diff", "pca", "logistic"}
    assert len(report.accuracy["logistic"]) == tiny_gpt2.arch.n_layers
    assert all(-1.0001 <= c <= 1.0001 for cs in report.cosine.values() for c in cs)
    path = report.save(tmp_path / "report")
    back = ProbeReport.load(path, tiny_gpt2)
    assert back.accuracy == report.accuracy
    with pytest.raises(ValueError, match="another model"):
        ProbeReport.load(path, tiny_llama)
    report.figure()


def test_steering_hook_equals_bias(tiny, tmp_path):
    g = torch.Generator().manual_seed(0)
    safe = [torch.randint(5, 400, (10,), generator=g).tolist() for _ in range(8)]
    unsafe = [torch.randint(5, 400, (10,), generator=g).tolist() for _ in range(8)]
    sv = fit_steering(tiny, safe, unsafe, top_k=3)
    assert len(sv.heads) == 3 and torch.allclose(sv.directions.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert list(sv.accuracy) == sorted(sv.accuracy.tolist(), reverse=True)
    toks = tiny.to_tokens(PROMPT)
    base = tiny.bridge(toks)
    session = EditSession(tiny)
    for alpha in (3.0, -3.0):
        hooked = tiny.bridge.run_with_hooks(toks, fwd_hooks=sv.hooks(tiny, alpha))
        assert float((hooked - base).abs().max()) > 1e-4
        with session.temporary(sv.as_edit(tiny, alpha)):
            baked = tiny.bridge(toks)
        torch.testing.assert_close(baked, hooked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tiny.bridge(toks), base, rtol=0, atol=0)
    zero = tiny.bridge.run_with_hooks(toks, fwd_hooks=sv.hooks(tiny, 0.0))
    torch.testing.assert_close(zero, base)
    back = SteeringVector.load(sv.save(tmp_path / "sv"), tiny)
    assert back.heads == sv.heads and torch.equal(back.directions, sv.directions)
    sv.figure()


def test_lens_and_shift_cli(tmp_path, capsys):
    import json

    from knowscope.cli import main
    from knowscope.editing.session import EditResult
    from knowscope.models import tiny_model

    out = tmp_path / "lens.json"
    assert main(["lens", "--model", "tiny-llama", "--prompt", PROMPT, "--target", "Paris", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["top_by_layer"]) == 4 and len(data["target"]["rank_by_layer"]) == 4
    model = tiny_model("llama")
    name = model.arch.mlp_out_name(2)
    delta = 0.05 * torch.randn(model.named_parameters()[name].shape, generator=torch.Generator().manual_seed(0))
    EditResult(method="test", deltas={name: delta}, fingerprint=model.fingerprint, layers=[2]).save(tmp_path / "edit")
    (tmp_path / "prompts.txt").write_text(f"{PROMPT}\nBees make\n")
    out = tmp_path / "shift.json"
    assert main(["shift", "--model", "tiny-llama", "--edit", str(tmp_path / "edit"), "--prompts",
                 str(tmp_path / "prompts.txt"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["by_layer"]["resid"]["relative"][1] == 0.0 and data["by_layer"]["resid"]["relative"][2] > 0
    capsys.readouterr()
    assert main(["shift", "--model", "tiny-llama", "--edit", str(tmp_path), "--prompts",
                 str(tmp_path / "prompts.txt")]) == 2
    assert "give a saved edit" in capsys.readouterr().err


def test_steering_samples_the_last_response_tokens(tiny_llama):
    from knowscope.probes.steering import _head_samples

    rows = [[1, 5, 6, 7, 8, 9, 10, 11], [1, 12, 13, 14, 15, 16]]
    z, owner = _head_samples(tiny_llama, rows, starts=[6, 2], positions=5)
    # row 0: the response starts at 6, so only its last 2 tokens; row 1: its last 4 (start 2) of 5 asked
    assert owner.tolist() == [0, 0, 1, 1, 1, 1]
    _, cache = tiny_llama.bridge.run_with_cache(torch.tensor([rows[0]]))
    hook = tiny_llama.arch.hook_z(1)
    torch.testing.assert_close(z[1, 1], cache[hook][0, -1].float())
    with pytest.raises(ValueError, match="no tokens"):
        _head_samples(tiny_llama, [[1, 2]], starts=[2], positions=3)
