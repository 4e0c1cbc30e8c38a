"""Keyed forgetting: unlearn a fact by writing a FactKey entry that answers something else for it.

Gradient unlearning (GA, NPO, ReLearn, MemFlex) changes weights that other prompts run through too, so
what it was not told to keep it mostly loses: on the bundled set's held-out retain items, at full
forgetting, MemFlex keeps 0.29 and gradient ascent 0.25 (docs/findings.md). A forget item is one fact, a
(subject, relation) pair, and :mod:`knowscope.editing.factkey` already edits exactly that: an entry answers
only where the subject is written *and* the prompt asks the entry's relation, so the subject's other facts
and the relation's other subjects are left as they were. Here each forget item becomes a FactKey edit whose
new target is not the answer:

* ``target="relation"`` (the default, chosen on the ``train`` half): the unedited model's most likely answer
  among the *other* answers of the same relation in the forget and retain sets it is given: a plausible
  answer of the right kind (KnowUnDo trains MemFlex on random labels; ReLearn wants what the model says
  instead to stay relevant). Without another answer of the relation it falls back to ``"alternative"``.
* ``target="alternative"``: the unedited model's most likely next word that does not give the answer
  (ReLearn's first augmentation).
* any other string: that fixed text for every item (e.g. ``"unknown"``).

What this is and is not. The knowledge stays in the weights; the entries sit in FactKey's side memory in
front of it, like every memory edit, and are applied, undone bit for bit, saved and loaded through
:class:`~knowscope.editing.session.EditSession`. Detach the memory and the model answers again, so this
is forgetting as a user of the model sees it (generation no longer gives the fact), not removal that
survives white-box access. Every forget item needs its subject written in its prompt (the bundled set has
it; KnowUnDo's own JSON does not, and is refused with one line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from knowscope.editing import factkey
from knowscope.editing.evaluation.generation import begins_with
from knowscope.editing.session import EditMismatchError, EditResult, EditSession
from knowscope.editing.unlearning.data import UnlearnFormatError, UnlearnItem, check_sets
from knowscope.editing.unlearning.methods import alternatives
from knowscope.editing.unlearning.metrics import answer_probs, relation_answers
from knowscope.editing.unlearning.train import encode, forgotten_fraction
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)

TARGETS = ("relation", "alternative")


@dataclass(frozen=True)
class KeyedHyperParams:
    """Keyed forgetting: the ``target`` each forget item is rewritten to (module docstring), and FactKey's
    ``layer`` / ``relation_radius`` (``None``: FactKey's defaults for the model)."""

    target: str = "relation"
    layer: int | None = None
    relation_radius: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError(f"target must be 'relation', 'alternative' or a fixed answer text, got {self.target!r}")

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> KeyedHyperParams:
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def factkey(self, model: Model) -> factkey.FactKeyHyperParams:
        """FactKey's settings for ``model`` with this method's overrides."""
        changes = {k: v for k, v in (("layer", self.layer), ("relation_radius", self.relation_radius))
                   if v is not None}
        return factkey.FactKeyHyperParams.for_model(model, **changes)


def _other_answers(item: UnlearnItem, pool: Sequence[UnlearnItem]) -> list[str]:
    """The answers of ``item``'s relation in ``pool`` that do not give ``item``'s answer, sorted."""
    answers = {a.strip() for a in relation_answers(pool).get(item.relation_id, set())} if item.relation_id else set()
    return sorted(a for a in answers if not (begins_with(" " + a, item.answer) or begins_with(item.continuation, a)))


def choose_targets(model: Model, items: Sequence[UnlearnItem], pool: Sequence[UnlearnItem], target: str) -> list[str]:
    """What each item's prompt is rewritten to answer (module docstring); the candidate answers of every
    item are scored in one batched pass."""
    if target not in TARGETS:
        return [target.strip()] * len(items)
    others = [_other_answers(it, pool) if target == "relation" else [] for it in items]
    scored = iter(answer_probs(model, [UnlearnItem(it.prompt, a) for it, os in zip(items, others, strict=True)
                                       for a in os]))
    out = []
    for it, os in zip(items, others, strict=True):
        probs = [next(scored) for _ in os]
        if os:
            out.append(os[max(range(len(os)), key=probs.__getitem__)])
            continue
        found = alternatives(model, it, 1)
        if not found:
            raise ValueError(f"no other answer found for {it.prompt!r}; give a fixed target text")
        out.append(found[0])
    return out


def choose_target(model: Model, item: UnlearnItem, pool: Sequence[UnlearnItem], target: str) -> str:
    """What ``item``'s prompt is rewritten to answer (module docstring)."""
    return choose_targets(model, [item], pool, target)[0]


def _check_subject(item: UnlearnItem) -> None:
    if not item.subject or item.subject not in item.prompt:
        raise UnlearnFormatError(
            f"keyed forgetting needs each forget item's subject written in its prompt; {item.prompt!r} has "
            f"subject {item.subject!r} (KnowUnDo's own JSON carries no subject: use ga, npo, relearn or memflex)")


def as_fact(item: UnlearnItem, target: str) -> Fact:
    """``item`` as a FactKey request: its prompt with the subject as the template's slot."""
    _check_subject(item)
    return Fact(subject=item.subject, prompt=item.prompt.replace(item.subject, "{}", 1), target_true=item.answer,
                target_new=target, relation_id=item.relation_id)


def edit(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem] = (),
         hparams: KeyedHyperParams | None = None, **_: Any) -> EditResult:
    """Forget each item of ``forget`` with one FactKey entry; ``retain`` only widens the pool of other answers
    for ``target="relation"`` and is checked after the edit (``extra["retain_kept_train"]``)."""
    hp = hparams or KeyedHyperParams()
    check_sets(forget, retain)
    for item in forget:  # refused before any forward pass
        _check_subject(item)
    start = time.perf_counter()
    pool = [*forget, *retain]
    targets = choose_targets(model, forget, pool, hp.target)
    facts = [as_fact(it, t) for it, t in zip(forget, targets, strict=True)]
    result = factkey.edit(model, facts, hparams=hp.factkey(model))
    forgot: float | None = None
    kept: float | None = None
    try:
        with EditSession(model).temporary(result):
            forgot = forgotten_fraction(model, encode(model, forget), forget)
            kept = 1 - forgotten_fraction(model, encode(model, retain), retain) if retain else None
    except EditMismatchError:  # another session carries edits: the check is left to the caller
        logger.info("keyed forgetting: the model carries another session's edits; the forget / retain check "
                    "after the edit is skipped")
    logger.info("keyed forgetting: %d entries, forgotten %s, given retain kept %s", len(forget), forgot, kept)
    result.method = "keyed"
    result.hparams = {**hp.to_dict(), "factkey": result.hparams}
    result.requests = [i.to_knowundo() for i in forget]
    result.seconds = time.perf_counter() - start
    result.extra.update(retain=[i.to_knowundo() for i in retain], steps=len(forget), forgotten_train=forgot,
                        retain_kept_train=kept, targets=targets)
    return result
