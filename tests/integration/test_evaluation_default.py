"""The evaluation on the real default model: an unedited run is perfectly specific under every protocol,
and a ROME edit's generated answer agrees with its teacher-forced efficacy.

Facts are the bundled ones with relation-specificity probes (the subject's other relations) and
portability prompts where the builder found a chain; every ``STRIDE``-th one.
"""

from __future__ import annotations

import pytest

from knowscope.editing.evaluation import EditMetrics, evaluate, pre_edit_predictions
from knowscope.editing.session import EditSession

STRIDE = 23


@pytest.fixture(scope="module")
def probed(bundled_facts):
    facts = [f for f in bundled_facts if f.relation_specificity][::STRIDE]
    assert len(facts) >= 6
    return facts


def test_unedited_model_is_perfectly_specific_under_both_protocols(default_model, probed):
    reference = pre_edit_predictions(default_model, probed)
    m = evaluate(default_model, probed, reference=reference, fluency=False)
    print(m.summary())
    for key in ("locality_acc", "relation_specificity", "gen_neighborhood", "gen_locality", "gen_relation_specificity"):
        assert getattr(m, key) == 1.0, key
    # the bundled probes are answered right: their true answer beats the edit's new target
    assert m.relation_specificity_score >= 0.9
    assert m.gen_efficacy <= 0.05 and m.efficacy_score <= 0.05  # nothing edited yet


def test_rome_generation_efficacy_agrees_with_teacher_forcing(default_model, probed):
    from knowscope.editing import rome

    facts = probed[:6]
    reference = pre_edit_predictions(default_model, facts)
    session = EditSession(default_model)
    rows = []
    for fact in facts:
        result = rome.edit(default_model, [fact], layers="auto")
        with session.temporary(result):
            rows += evaluate(default_model, [fact], reference=reference, fluency=False).per_fact
    m = EditMetrics.from_rows(rows)
    print(m.summary())
    assert m.efficacy_score >= 0.95
    # a user reads the generated answer: it begins with the new object as often as teacher forcing says
    assert m.gen_efficacy >= m.efficacy_score - 1 / len(facts) - 1e-9
    assert m.relation_specificity is not None and m.gen_relation_specificity is not None
