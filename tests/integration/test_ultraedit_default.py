"""UltraEdit on the real default model with its tuned defaults (layers 19-27, lr 1e-4).

What is claimed is what the lifelong benchmark's tuning showed (docs/findings.md): one edit on the unedited
model takes (the edited prompt prefers the new object), a second edit continues from the first edit's lifelong
statistics, and the session restores the weights bit for bit. The benchmark, not this test, measures how
edits hold up over hundreds of them.
"""

from __future__ import annotations

import torch

from knowscope.editing.editors import get_editor
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.session import EditSession
from knowscope.editing.ultraedit import LifelongState

STRIDE = 23


def test_ultraedit_edits_take_and_undo_restores(default_model, bundled_facts):
    facts = bundled_facts[::STRIDE][:2]
    before = {k: v.detach().clone() for k, v in default_model.named_parameters().items()}
    reference = pre_edit_predictions(default_model, facts, generation=False)
    editor = get_editor("ultraedit")
    session = EditSession(default_model)
    try:
        first = session.apply(editor(default_model, [facts[0]]))
        assert first.layers == list(range(19, 28))
        m = evaluate(default_model, facts[:1], reference=reference, generation=False, fluency=False)
        assert m.efficacy_score == 1.0
        second = session.apply(editor(default_model, [facts[1]]))
        rows = sum(g["n"] for g in second.extra["lifelong"].values())
        assert rows == sum(g["n"] for g in first.extra["lifelong"].values()) + 9 * second.extra["key_rows"]
        assert LifelongState.of_model(default_model).to_json() == second.extra["lifelong"]
        m = evaluate(default_model, facts[1:], reference=reference, generation=False, fluency=False)
        assert m.efficacy_score == 1.0
    finally:
        session.rollback()
    assert all(torch.equal(before[k], v) for k, v in default_model.named_parameters().items())
