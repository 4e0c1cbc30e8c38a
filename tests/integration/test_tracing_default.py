"""Causal tracing on the real default model reproduces ROME's localization (averaged over bundled facts).

ROME reports for GPT-2 XL / GPT-J: restoring MLP outputs at the *last subject token* matters most in
early-to-middle layers, while restoring the hidden state at the *last token* matters in late layers.
Traced here with fewer noise samples than the notebook and only the two token classes the claims are
about, to keep the file inside the CI budget.
"""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits import locate, trace, trace_facts

N_FACTS = 20


@pytest.fixture(scope="module")
def aggregate(default_model, bundled_facts):
    facts = bundled_facts[:N_FACTS]
    assert len(facts) == N_FACTS, "the bundled fact set is too small for this test"
    return trace_facts(default_model, facts, kinds=("hidden", "mlp"), samples=3, window=10, seed=0,
                       tokens=("last_subject", "last"))


def test_noise_destroys_the_answer(aggregate):
    lows = torch.tensor([t.low_score for t in aggregate.traces])
    highs = torch.tensor([t.high_score for t in aggregate.traces])
    assert highs.mean() > 0.2
    assert lows.mean() < 0.5 * highs.mean()


def test_mlp_at_last_subject_peaks_early_to_middle(aggregate, default_model):
    n = default_model.arch.n_layers
    mlp = aggregate.effect("mlp", "last_subject")
    print("mlp @ last subject:", [round(float(x), 3) for x in mlp])
    peak = int(mlp.argmax())
    assert peak < (2 * n) // 3, f"MLP effect peaks at layer {peak} of {n}"
    assert mlp.max() > 0.02
    assert mlp.max() > 2 * mlp[-3:].mean()  # a clear peak: the last layers' MLPs matter much less


def test_hidden_at_last_token_rises_late(aggregate, default_model):
    n = default_model.arch.n_layers
    hidden = aggregate.effect("hidden", "last")
    print("hidden @ last token:", [round(float(x), 3) for x in hidden])
    early, late = hidden[: n // 3].mean(), hidden[(2 * n) // 3 :].mean()
    assert late > 0.1
    assert late > 4 * max(float(early), 1e-4)


def test_locate_picks_the_mlp_peak(aggregate, default_model):
    """locate() against the MLP effect recomputed here from the raw per-fact tables (score minus the
    corrupted score at each fact's last subject token, averaged over facts) - not from the aggregate."""
    n = default_model.arch.n_layers
    rows = []
    for tr in aggregate.traces:
        t = tr.subject_range[1] - 1
        rows.append(tr.scores["mlp"][t] - tr.low_score)
    effect = torch.stack(rows).mean(0)
    choice = locate(default_model, aggregate, kind="mlp", window=5)
    assert choice.layer == int(effect.argmax())
    torch.testing.assert_close(torch.as_tensor(choice.effect_by_layer, dtype=effect.dtype), effect,
                               rtol=1e-5, atol=1e-6)
    assert len(choice.layers) == 5 and choice.layer in choice.layers and choice.n_facts == N_FACTS
    assert choice.layers == sorted(choice.layers) and choice.layers[-1] - choice.layers[0] == 4
    assert 0 <= choice.layers[0] and choice.layers[-1] < n


def test_fast_equals_reference_on_the_default_model(default_model):
    """One cheap slice of the exactness check on the real model (last subject token, mlp, 2 samples)."""
    kw = dict(kinds=("mlp",), samples=2, window=10, seed=3, tokens="last_subject")
    prompt, subject = "The official language of Mexico is", "Mexico"
    fast = trace(default_model, prompt, subject, **kw)
    ref = trace(default_model, prompt, subject, method="reference", **kw)
    t = fast.subject_range[1] - 1
    assert (fast.scores["mlp"][t] - ref.scores["mlp"][t]).abs().max() < 1e-5
