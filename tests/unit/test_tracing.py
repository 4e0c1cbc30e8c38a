"""Causal tracing on tiny random models: the fast path equals the plain per-cell loop, invariants, I/O."""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits import tracing
from knowscope.circuits.tracing import (
    ALL_KINDS,
    FactsTraceResult,
    LayerChoice,
    TraceResult,
    aggregate,
    choose_layers,
    locate,
    token_classes,
    trace,
    window_layers,
)
from knowscope.models import tiny_model

PROMPT = "Lionel Messi plays soccer in"
SUBJECT = "Lionel Messi"



@pytest.fixture(scope="module", params=["gpt2", "llama"])
def sharp(request):
    """A 3-layer tiny model with large random weights, so restoring a state moves the answer a lot."""
    overrides = {"n_layer": 3} if request.param == "gpt2" else {"num_hidden_layers": 3}
    return tiny_model(request.param, seed=1, initializer_range=0.3, **overrides)


def _kwargs(**kw):
    base = dict(samples=3, window=2, seed=7, noise=3.0)
    base.update(kw)
    return base


@pytest.mark.parametrize("fast_mode", [None, "suffix", "full"])
def test_fast_equals_reference_all_kinds(sharp, fast_mode):
    """The batched partial-forward path gives the per-cell loop's numbers (GPT-2 Conv1D; Llama GQA + RoPE),
    in both partial-forward modes (KV-cache suffix passes and cache-free full passes) and the auto-detected one."""
    fast = trace(sharp, PROMPT, SUBJECT, kinds=ALL_KINDS, method="fast", fast_mode=fast_mode, **_kwargs())
    ref = trace(sharp, PROMPT, SUBJECT, kinds=ALL_KINDS, method="reference", **_kwargs())
    assert fast.low_score == pytest.approx(ref.low_score, abs=1e-7)
    for kind in ALL_KINDS:
        assert fast.scores[kind].shape == (len(fast.tokens), sharp.arch.n_layers)
        diff = (fast.scores[kind] - ref.scores[kind]).abs().max().item()
        assert diff <= 1e-5, (kind, diff)
    # the comparison is not vacuous: restoring states really moves the answer's probability
    assert (ref.scores["hidden"] - ref.low_score).abs().max() > 1e-2
    assert (ref.scores["mlp"] - ref.low_score).abs().max() > 1e-3
    # and the fast path did fewer forward passes than one per cell
    assert fast.forward_passes < ref.forward_passes / 4


def test_fast_chunking_is_exact(tiny_llama):
    a = trace(tiny_llama, PROMPT, SUBJECT, kinds=("hidden", "mlp"), **_kwargs(window=3))
    b = trace(tiny_llama, PROMPT, SUBJECT, kinds=("hidden", "mlp"), max_rows=4, **_kwargs(window=3))
    for kind in a.scores:
        assert torch.allclose(a.scores[kind], b.scores[kind], atol=1e-6)
    assert b.forward_passes > a.forward_passes


def test_trace_invariants(sharp):
    r = trace(sharp, PROMPT, SUBJECT, kinds=("hidden", "mlp"), **_kwargs())
    s0, s1 = r.subject_range
    n = sharp.arch.n_layers
    # restoring the last token's final state is the clean run; restoring before the subject changes nothing
    assert r.scores["hidden"][-1, n - 1].item() == pytest.approx(r.high_score, abs=1e-6)
    assert torch.allclose(r.scores["hidden"][:s0], torch.full((s0, n), r.low_score), atol=1e-7)
    # a hidden restore at the last layer of a non-final token cannot reach the last position
    assert torch.allclose(r.scores["hidden"][s0:-1, n - 1], torch.tensor(r.low_score), atol=1e-6)
    assert "".join(r.tokens[s0:s1]).strip() == SUBJECT


def test_peak_reads_token_and_layer_of_the_largest_cell(tiny_gpt2):
    """peak() turns the flat argmax into (token, layer) and ignores untraced (NaN) rows."""
    r = trace(tiny_gpt2, PROMPT, SUBJECT, kinds="hidden", tokens="last", **_kwargs())
    n_tok, n_layer = r.scores["hidden"].shape
    table = torch.full((n_tok, n_layer), float("nan"))
    table[1] = 0.1
    table[2] = torch.linspace(0.0, 0.5, n_layer)
    table[2, 1] = 0.9  # the largest cell: token 2, layer 1 (a swapped // and % would say token 1 ...)
    r.scores["hidden"] = table
    assert r.peak("hidden") == {"token": 2, "layer": 1}
    table[0, n_layer - 1] = 5.0
    assert r.peak("hidden") == {"token": 0, "layer": n_layer - 1}


def test_same_seed_same_numbers_other_seed_differs(tiny_gpt2):
    a = trace(tiny_gpt2, PROMPT, SUBJECT, kinds="hidden", **_kwargs())
    b = trace(tiny_gpt2, PROMPT, SUBJECT, kinds="hidden", **_kwargs())
    c = trace(tiny_gpt2, PROMPT, SUBJECT, kinds="hidden", **_kwargs(seed=8))
    assert torch.equal(a.scores["hidden"], b.scores["hidden"])
    assert not torch.equal(a.scores["hidden"], c.scores["hidden"])


def test_absolute_noise_and_target(tiny_gpt2):
    r = trace(tiny_gpt2, PROMPT, SUBJECT, target="Paris", kinds="hidden", noise_std=0.25, samples=2, window=2)
    assert r.noise_std == 0.25 and r.noise is None
    assert r.target == " Paris"
    assert r.target_id == tiny_gpt2.encode_target(" Paris")[0]
    probs = tiny_gpt2.next_token_probs(PROMPT)
    assert r.high_score == pytest.approx(float(probs[r.target_id]), abs=1e-6)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def four_layers(request):
    """A 4-layer tiny model with large weights (restoring states matters), for the near-linear tests."""
    overrides = {"n_layer": 4} if request.param == "gpt2" else {"num_hidden_layers": 4}
    return tiny_model(request.param, seed=1, initializer_range=0.3, **overrides)


@pytest.mark.parametrize("window", [1, 2, 10])
def test_attribution_is_the_first_order_term_of_every_kind_and_window(four_layers, window):
    """In the near-linear regime (tiny noise) attribution patching equals the exact trace to first order,
    for hidden, mlp and attn at every window: a windowed restore counts no path from one window site
    through another (the plain corrupted-run gradient would; at window 2 that was off by ~100%)."""
    kw = dict(samples=3, seed=7, window=window, noise_std=1e-4)
    kinds = ("hidden", "mlp", "attn")
    exact = trace(four_layers, PROMPT, SUBJECT, kinds=kinds, **kw)
    approx = trace(four_layers, PROMPT, SUBJECT, kinds=kinds, method="attribution", **kw)
    assert approx.low_score == pytest.approx(exact.low_score, abs=1e-7)
    s0 = exact.subject_range[0]
    for kind in kinds:
        a, e = approx.indirect_effect(kind), exact.indirect_effect(kind)
        assert e.abs().max() > 0, kind  # not vacuous: restoring moves the answer
        rel = float((a - e).abs().max() / e.abs().max())
        assert rel < 0.03, (kind, window, rel)  # measured 0.003-0.018 (second order); 0.38-1.12 before
        assert torch.allclose(approx.scores[kind][:s0], torch.tensor(exact.low_score), atol=1e-9)
    if window == 1:  # one corrupted forward and its backward serve every cell
        assert approx.forward_passes == 4


def test_subject_range_and_errors(tiny_llama):
    s0, s1 = tiny_llama.subject_span(PROMPT, SUBJECT)
    toks = tiny_llama.to_str_tokens(PROMPT)
    assert s0 == 1  # BOS at 0
    assert "".join(toks[s0:s1]).strip() == SUBJECT
    s0, s1 = tiny_llama.subject_span("The capital of France is Paris", "France")
    assert "".join(tiny_llama.to_str_tokens("The capital of France is Paris")[s0:s1]).strip() == "France"
    with pytest.raises(ValueError, match="does not occur"):
        trace(tiny_llama, PROMPT, "Cristiano Ronaldo")
    with pytest.raises(ValueError, match="empty"):
        trace(tiny_llama, PROMPT, SUBJECT, target="  ")
    with pytest.raises(ValueError, match="window"):
        trace(tiny_llama, PROMPT, SUBJECT, window=0)
    with pytest.raises(ValueError, match="unknown kind"):
        trace(tiny_llama, PROMPT, SUBJECT, kinds=("neurons",))
    with pytest.raises(ValueError, match="unknown method"):
        trace(tiny_llama, PROMPT, SUBJECT, method="fastest")
    with pytest.raises(ValueError, match="samples"):
        trace(tiny_llama, PROMPT, SUBJECT, samples=0)
    with pytest.raises(ValueError, match="attribution"):
        trace(tiny_llama, PROMPT, SUBJECT, kinds="hidden_frozen_mlp", method="attribution")


def test_window_layers_match_rome():
    assert list(window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(window_layers(12, 10, 30)) == list(range(7, 17))
    assert list(window_layers(29, 10, 30)) == list(range(24, 30))
    assert list(window_layers(3, 1, 30)) == [3]
    assert list(window_layers(3, 3, 30)) == [2, 3, 4]


def test_token_classes():
    # BOS, The, E, iff, el, Tower, is, in, Paris  -> subject 2..5, 9 tokens
    c = token_classes((2, 6), 9)
    assert c == {"first_subject": [2], "middle_subject": [3, 4], "last_subject": [5], "first_subsequent": [6],
                 "further": [7], "last": [8]}
    c = token_classes((1, 2), 3)  # one-token subject followed directly by the last token
    assert c["first_subject"] == c["last_subject"] == [1] and c["middle_subject"] == []
    assert c["first_subsequent"] == [] and c["further"] == [] and c["last"] == [2]


def test_save_load_and_figure(tmp_path, tiny_gpt2):
    r = trace(tiny_gpt2, PROMPT, SUBJECT, kinds=("hidden", "mlp", "attn"), **_kwargs())
    r.save(tmp_path / "t")
    back = TraceResult.load(tmp_path / "t")
    assert back.to_dict() == r.to_dict()
    fig = r.figure()
    assert len(fig.data) == 3 and fig.data[0].type == "heatmap"
    assert any("*" in label for label in fig.data[0].y)  # subject tokens are marked
    d = r.to_dict()
    assert set(d["peak"]) == {"hidden", "mlp", "attn"} and len(d["scores"]["mlp"]) == len(d["tokens"])


def _fake_trace(effects_last_subject: list[float], low: float = 0.1) -> TraceResult:
    n = len(effects_last_subject)
    scores = torch.full((5, n), low)
    scores[2] = low + torch.tensor(effects_last_subject)  # tokens: BOS, s, s, after, last -> last subject = 2
    return TraceResult(prompt="p", subject="s", tokens=["<s>", "a", "b", "c", "d"], subject_range=(1, 3),
                       target=" x", target_id=1, scores={"mlp": scores}, low_score=low, high_score=0.9, samples=1,
                       noise=3.0, noise_std=0.3, window=2, seed=0, method="fast")


def test_aggregate_and_locate(tmp_path, tiny_gpt2):
    traces = [_fake_trace([0.0, 0.2, 0.1, 0.0]), _fake_trace([0.0, 0.4, 0.5, 0.0])]
    agg = aggregate(traces)
    assert torch.allclose(agg.effect("mlp", "last_subject"), torch.tensor([0.0, 0.3, 0.3, 0.0]))
    assert torch.allclose(agg.effect("mlp", "first_subject"), torch.zeros(4))
    assert agg.class_counts["middle_subject"] == 0 and agg.class_counts["last_subject"] == 2
    agg.save(tmp_path / "agg")
    back = FactsTraceResult.load(tmp_path / "agg")
    assert torch.equal(back.class_effects["mlp"], agg.class_effects["mlp"]) and back.n_facts == 2
    assert len(agg.figure().data) == 1

    choice = locate(tiny_gpt2, agg, kind="mlp", window=3)
    assert choice.layer == 1 and choice.layers == [0, 1, 2]
    assert choice.effect_by_layer == pytest.approx([0.0, 0.3, 0.3, 0.0])
    choice.save(tmp_path / "choice")
    assert LayerChoice.load(tmp_path / "choice").to_dict() == choice.to_dict()
    with pytest.raises(ValueError, match="no kind"):
        locate(tiny_gpt2, agg, kind="hidden")


def test_choose_layers_windows():
    eff = [0, 1, 5, 2, 0, 0]
    assert choose_layers(eff, None) == (2, [2])
    assert choose_layers(eff, 3) == (2, [1, 2, 3])
    assert choose_layers([9, 0, 0, 0], 3) == (0, [0, 1, 2])
    assert choose_layers([0, 0, 0, 9], 2) == (3, [2, 3])
    with pytest.raises(ValueError, match="window"):
        choose_layers(eff, 7)


def test_trace_facts_on_tiny(tiny_llama):
    from knowscope.facts import Fact

    facts = [Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="golf"),
             Fact(subject="Mexico", prompt="The official language of {} is", target_true="Spanish",
                  target_new="French")]
    agg = tracing.trace_facts(tiny_llama, facts, kinds="mlp", samples=2, window=2)
    assert agg.n_facts == 2 and agg.class_effects["mlp"].shape == (6, tiny_llama.arch.n_layers)
    expected = torch.stack([t.indirect_effect("mlp")[t.token_classes()["last_subject"][0]] for t in agg.traces]).mean(0)
    assert torch.allclose(agg.effect("mlp", "last_subject"), expected)
    choice = locate(tiny_llama, agg)
    assert choice.layer == int(torch.argmax(expected)) and choice.layers == [choice.layer]
