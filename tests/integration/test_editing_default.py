"""Editing the real default model: ROME, MEMIT and FT-L on bundled facts, evaluated under both protocols.

Facts are spread over the relations (every ``STRIDE``-th bundled fact). Thresholds are those of the
acceptance criteria (ROME: efficacy >= 0.95, paraphrase >= 0.70, neighbourhood >= 0.70; MEMIT batch:
efficacy >= 0.90, neighbourhood >= 0.70) on a CI-sized sample; the benchmark runs the full-size
versions. Locality is always measured against the unedited model.
"""

from __future__ import annotations

import pytest
import torch

from knowscope.editing.evaluation import EditMetrics, evaluate, pre_edit_predictions
from knowscope.editing.session import EditSession

STRIDE = 19


@pytest.fixture(scope="module")
def spread(bundled_facts):
    return bundled_facts[::STRIDE]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters().items()}


def test_unedited_model_prefers_true_targets(default_model, spread):
    """The evaluation on the real model: before any edit the true objects win and locality is perfect."""
    reference = pre_edit_predictions(default_model, spread)
    m = evaluate(default_model, spread, reference=reference, fluency=False)
    assert m.n_facts == len(spread) >= 10
    assert m.efficacy_score <= 0.05  # the model knows these facts: P(true) > P(new)
    assert m.efficacy_magnitude < -0.1
    assert m.paraphrase_score <= 0.2
    assert m.neighborhood_score >= 0.8
    assert m.locality_acc == 1.0
    assert m.rewrite_acc <= 0.2


def test_rome_one_fact_at_a_time(default_model, spread):
    from knowscope.editing import rome

    facts = spread[:6]
    before = _weights(default_model)
    reference = pre_edit_predictions(default_model, facts)
    session = EditSession(default_model)
    rows = []
    for fact in facts:
        result = rome.edit(default_model, [fact])
        with session.temporary(result):
            rows += evaluate(default_model, [fact], reference=reference, fluency=False).per_fact
    m = EditMetrics.from_rows(rows)
    print(m.summary())
    assert m.efficacy_score >= 0.95
    assert m.paraphrase_score >= 0.70
    assert m.neighborhood_score >= 0.70
    assert m.rewrite_acc >= 0.90
    assert m.locality_acc >= 0.70
    after = _weights(default_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_packed_paths_give_the_bridge_paths_rome_update(default_model, spread):
    """Issue #17: the plain and packed v* paths (cached prefix, positions from the subject on, logits
    only where the loss reads them; one masked call per block on plain tensor code or through the
    bridge) reproduce the bridge's full forward pass on the real model: same steps, same update within
    1e-4 relative; and the plain one was checked and chosen."""
    from knowscope.editing import rome
    from knowscope.editing.vpaths import v_path

    fact = spread[1]
    got = {}
    for path in ("bridge", "packed", "plain"):
        with v_path(path):
            got[path] = rome.edit(default_model, [fact])
    slow = got["bridge"]
    for path in ("packed", "plain"):
        fast = got[path]
        assert [r["steps"] for r in slow.extra["per_request"]] == [r["steps"] for r in fast.extra["per_request"]]
        for name in slow.deltas:
            assert float((fast.deltas[name] - slow.deltas[name]).norm() / slow.deltas[name].norm()) < 1e-4, path
    assert default_model.compat.edit_modes["hook_mlp_out"] == "plain"


def test_rome_keeps_generation_fluent(default_model, spread):
    """ROME's fluency measure (weighted 2-/3-gram entropy) stays close to the unedited model's."""
    from knowscope.editing import rome

    fact = spread[1]
    base = evaluate(default_model, [fact], fluency=True, max_generation_prompts=1, seed=0)
    session = EditSession(default_model)
    with session.temporary(rome.edit(default_model, [fact])):
        edited = evaluate(default_model, [fact], session=session, fluency=True, max_generation_prompts=1, seed=0)
    assert base.fluency > 3.0  # a 100-token generation of a working model is not a loop
    assert edited.fluency > base.fluency - 1.0
    assert edited.efficacy_score == 1.0


def test_auto_edits_at_the_layer_the_sweep_measured_best(default_model, spread):
    """Issue #18: on the default model ``layers="auto"`` is the recorded sweep's best ROME layer (40 facts ×
    30 layers), not the causal-tracing peak; ``"locate"`` still gives the peak."""
    from knowscope.editing.layers import measured_layer, resolve_layers

    m = measured_layer(default_model, "rome")
    assert m is not None and m.n_facts >= 40 and m.n_cells >= 40 * default_model.arch.n_layers
    assert m.value >= m.located_value
    assert resolve_layers(default_model, spread[:2], "auto", [5], method="ROME", exactly_one=True) == [m.layer]
    mm = measured_layer(default_model, "memit")
    assert mm is not None
    assert resolve_layers(default_model, [], "auto", [3], method="MEMIT", window=5) == \
        [x for x in range(mm.layer - 2, mm.layer + 3) if 0 <= x < default_model.arch.n_layers]


def test_memit_batch(default_model, spread):
    from knowscope.editing import memit

    facts = spread[:10]
    reference = pre_edit_predictions(default_model, facts)
    session = EditSession(default_model)
    result = memit.edit(default_model, facts)
    with session.temporary(result):
        m = evaluate(default_model, facts, reference=reference, fluency=False)
    print(m.summary())
    assert m.efficacy_score >= 0.90
    assert m.neighborhood_score >= 0.70
    assert m.locality_acc >= 0.70


def test_ft_baseline(default_model, spread):
    """Constrained fine-tuning (FT-L) raises P(target_new) on every fact and restores the weights after.

    FT-L is the weak baseline of the papers: measured here (layer 3, L-inf 2e-3) it flips some facts
    but not all, and disturbs neighbours more than ROME, so only its direction is asserted.
    """
    from knowscope.editing import ft

    facts = spread[:4]
    before = _weights(default_model)
    reference = pre_edit_predictions(default_model, facts)
    base = evaluate(default_model, facts, reference=reference, fluency=False)
    session = EditSession(default_model)
    rows = []
    for fact in facts:
        with session.temporary(ft.edit(default_model, [fact])):
            rows += evaluate(default_model, [fact], reference=reference, fluency=False).per_fact
    m = EditMetrics.from_rows(rows)
    print(m.summary())
    for b, r in zip(base.per_fact, m.per_fact, strict=True):
        assert r["p_new"] > b["p_new"], r["subject"]
    assert m.efficacy_score > base.efficacy_score
    after = _weights(default_model)
    assert all(torch.equal(before[k], after[k]) for k in before)
