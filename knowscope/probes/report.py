"""The edit report: what one edit did to a fact and around it, measured and saved by one function.

:func:`edit_report` takes an :class:`~knowscope.editing.EditSession` whose last applied edit is the
one to report on, and measures, against the session's unedited weights:

* the top next tokens on the fact's rewrite prompt, paraphrases and neighbours, before vs after
  (:class:`~knowscope.editing.evaluation.predictions.PredictionTable`);
* the CounterFact and EasyEdit metrics (:func:`~knowscope.editing.evaluation.evaluate`, no fluency);
* the activation shift of the residual stream, MLP and attention outputs on those prompts;
* optionally the knowledge circuit before vs after (:func:`~knowscope.circuits.circuit_diff`).

``knowscope demo`` and the viewer's Edit lab both call it, so the two always show the same numbers,
and :meth:`EditReport.save` writes the group the viewer opens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowscope.circuits import CircuitDiff, circuit_diff, knowledge_circuit, noise_floor
from knowscope.circuits.batches import CircuitBatch
from knowscope.editing.evaluation import EditMetrics, evaluate
from knowscope.editing.evaluation.predictions import PredictionTable
from knowscope.editing.session import EditResult, EditSession
from knowscope.facts import Fact
from knowscope.probes.shift import ActivationShift, activation_shift
from knowscope.work import OnUnit


@dataclass
class EditReport:
    """One edit's before-vs-after measurements (see the module docstring)."""

    edit: EditResult
    predictions: PredictionTable
    metrics: EditMetrics
    shift: ActivationShift
    circuit_diff: CircuitDiff | None = None
    circuit_diff_error: str | None = None

    def save(self, folder: str | Path, session: EditSession | None = None) -> Path:
        """Save side by side in ``folder`` (one group for the viewer): ``edit`` (the whole ``session``
        when given, else this edit), ``metrics``, ``predictions``, ``shift`` and ``circuit_diff``."""
        out = Path(folder)
        (session.save if session is not None else self.edit.save)(out / "edit")
        self.metrics.save(out / "metrics")
        self.predictions.save(out / "predictions")
        self.shift.save(out / "shift")
        if self.circuit_diff is not None:
            self.circuit_diff.save(out / "circuit_diff")
        return out


def report_prompts(fact: Fact) -> list[str]:
    """The prompts an edit report reads activations on: the rewrite prompt, two paraphrases, two neighbours."""
    return [fact.text, *fact.paraphrase_prompts[:2], *fact.neighborhood_prompts[:2]]


def edit_report(
    session: EditSession,
    fact: Fact,
    *,
    prompts: Sequence[str] | None = None,
    diff: bool = False,
    diff_input: Any = None,
    diff_before: Any = None,
    diff_method: str = "eap-ig",
    diff_corruption: str = "noise",
    diff_floor: bool = True,
    step: Callable[[str], None] | None = None,
    on_unit: OnUnit | None = None,
) -> EditReport:
    """Measure the session's last edit on ``fact`` (the edit stays applied; nothing else changes).

    ``diff=True`` adds the circuit diff: the knowledge circuit of ``diff_input`` (default ``[fact]``
    with ``diff_corruption``) on the unedited weights - or ``diff_before`` if already computed - vs
    on the edited ones. A diff that cannot be computed (e.g. the new and the true object share their
    first token) is reported in ``circuit_diff_error`` and leaves the rest of the report intact.
    ``diff_floor`` (when ``diff_input`` is facts, not a built batch) also computes the noise floor: a
    second unedited circuit with another corruption seed (:func:`~knowscope.circuits.noise_floor`), and
    the diff reports the edges gained / lost beyond it. ``step(name)`` is called before each stage
    (progress bars); ``on_unit(done, total)`` after each unit of the circuits' work (see
    :mod:`knowscope.work`; it may raise to stop).
    """
    if not session.history:
        raise ValueError("the session has no applied edit to report on; apply one first")
    model = session.model
    tick = step or (lambda name: None)
    tick("before vs after")
    predictions = PredictionTable.compute(model, fact, session)
    tick("metrics")
    metrics = evaluate(model, [fact], session=session, fluency=False)
    tick("activation shift")
    shift = activation_shift(session, list(prompts) if prompts is not None else report_prompts(fact))
    report = EditReport(edit=session.history[-1], predictions=predictions, metrics=metrics, shift=shift)
    if diff:
        tick("circuit diff")
        target = diff_input if diff_input is not None else [fact]
        kwargs = {} if diff_input is not None else {"corruption": diff_corruption}
        with_floor = diff_floor and not isinstance(target, CircuitBatch)
        n_circuits = (diff_before is None) + 1 + with_floor
        done = [0]

        def unit(d: int, total: int) -> None:
            if on_unit is not None:
                on_unit(done[0] * total + d, n_circuits * total)
                if d == total:
                    done[0] += 1

        try:
            before = diff_before
            floor = None
            if before is None:
                with session.unedited():
                    before = knowledge_circuit(model, target, method=diff_method, on_unit=unit, **kwargs)
            if with_floor:
                seed = int((before.meta.get("batch") or {}).get("seed", 0))
                with session.unedited():
                    floor = noise_floor(model, target, seeds=(seed, seed + 1), base=before, method=diff_method,
                                        on_unit=unit, **kwargs)
            after = knowledge_circuit(model, target, method=diff_method, on_unit=unit, **kwargs)
            report.circuit_diff = circuit_diff(before, after, floor=floor)
        except ValueError as exc:
            report.circuit_diff_error = str(exc)
    return report
