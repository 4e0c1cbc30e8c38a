"""Unlearning on the real default model: keyed forgetting on the bundled set's held-out half.

The method is given the forget set only (no retain item at all), and is held to #37's bars on every retain
item of the half (the same subjects' other facts and the same relations' other subjects with the same
answer): forget >= 0.9 by generation, keep >= 0.9, fluency within 5%. The gradient methods' figures
(bench_unlearning.py, about ten minutes each) are in docs/benchmarks.md#unlearning.
"""

from __future__ import annotations

from knowscope.editing.session import EditSession
from knowscope.editing.unlearning import evaluate_unlearning, get_unlearner, load_bundled_unlearn, unlearn_reference


def test_keyed_forgetting_forgets_and_keeps_what_it_never_saw(default_model):
    model = default_model
    uset = load_bundled_unlearn("val")
    reference = unlearn_reference(model, uset, fluency=True)
    before = evaluate_unlearning(model, uset, reference, fluency=False)
    assert before["gen_forget"] == 0.0 and before["gen_retain"] == 1.0  # the set is what the model knows
    result = get_unlearner("keyed").edit(model, uset.forget, [])
    with EditSession(model).temporary(result):
        after = evaluate_unlearning(model, uset, reference, fluency=True)
    assert after["gen_forget"] >= 0.9, after.values
    assert after["gen_retain"] >= 0.9, after.values
    assert after["gen_retain_neighborhood"] >= 0.9 and after["gen_retain_relation_specificity"] >= 0.9
    assert abs(after["fluency_ratio"] - 1) <= 0.05, after.values
    again = evaluate_unlearning(model, uset, reference, fluency=False)  # undone: the model answers again
    assert again["gen_forget"] == 0.0 and again["gen_retain"] == 1.0
