"""UltraEdit on the real default model with its tuned defaults (layers 19-27): what docs/findings.md reports.

* One edit on the unedited model does not take: the lifelong statistics then hold only that edit's rows (one
  per edited layer and answer token), and standardising its gradients over them removes the part the nine
  layers share, which is most of the descent direction. Edits take only as statistics accumulate (the
  lifelong benchmark: efficacy 0.59 after 100 edits one at a time).
* Several facts in one call (the paper's setting) take: 8 facts at lr 3e-4, at least 6 of them.
* The session restores the weights bit for bit, and the statistics count every row.
"""

from __future__ import annotations

import torch

from knowscope.editing.editors import get_editor
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.session import EditSession
from knowscope.editing.ultraedit import LifelongState

STRIDE = 23


def _rows(result):
    return sum(g["n"] for g in result.extra["lifelong"].values())


def test_ultraedit_one_edit_and_one_batch_on_the_default_model(default_model, bundled_facts):
    facts = bundled_facts[::STRIDE][:8]
    before = {k: v.detach().clone() for k, v in default_model.named_parameters().items()}
    reference = pre_edit_predictions(default_model, facts, generation=False)
    editor = get_editor("ultraedit")
    session = EditSession(default_model)
    try:
        first = session.apply(editor(default_model, [facts[0]]))
        assert first.layers == list(range(19, 28)) and _rows(first) == 9 * first.extra["key_rows"]
        m = evaluate(default_model, facts[:1], reference=reference, generation=False, fluency=False)
        assert m.efficacy_score == 0.0  # statistics of one edit: it does not take
        second = session.apply(editor(default_model, [facts[1]]))
        assert _rows(second) == _rows(first) + 9 * second.extra["key_rows"]
        assert LifelongState.of_model(default_model).to_json() == second.extra["lifelong"]
        session.rollback()
        assert all(torch.equal(before[k], v) for k, v in default_model.named_parameters().items())
        hp = editor.hparams.for_model(default_model, lr=3e-4)
        session.apply(editor(default_model, facts, hparams=hp))
        m = evaluate(default_model, facts, reference=reference, generation=False, fluency=False)
        assert m.efficacy_score >= 0.7
    finally:
        session.rollback()
    assert all(torch.equal(before[k], v) for k, v in default_model.named_parameters().items())
