"""The unedited model's answers, which every specificity score is compared with.

EasyEdit's locality compares the edited model's argmax tokens with the *unedited* model's (never with
the ground truth), and the generation-based specificity compares generated text with the unedited
model's. :class:`PreEditPredictions` holds both for some facts' neighbourhood, locality and
relation-specificity prompts. Take it with :func:`pre_edit_predictions` before editing (or with the
session, which lends the original weights), then pass it to ``evaluate`` after any number of edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from knowscope.editing.evaluation.generation import greedy_from_scores
from knowscope.editing.evaluation.plan import KEEP_KINDS, EditedFacts, plan
from knowscope.editing.scoring import _pair_ids, _score_ids
from knowscope.editing.session import EditSession
from knowscope.facts import Fact
from knowscope.models import Model

Pair = tuple[tuple[int, ...], tuple[int, ...]]  # (BOS-prepended prompt ids, answer ids)
GenKey = tuple[tuple[int, ...], int]  # (BOS-prepended prompt ids, tokens decoded)


@dataclass
class PreEditPredictions:
    """The unedited model's argmax tokens on every specificity pair of some facts and, with
    ``generation``, its greedy continuations of those prompts."""

    fingerprint: str
    argmax: dict[Pair, list[int]] = field(default_factory=dict)
    generated: dict[GenKey, tuple[int, ...]] = field(default_factory=dict)

    def lookup(self, key: Pair) -> list[int]:
        if key not in self.argmax:
            raise ValueError(
                "the pre-edit predictions do not cover a locality prompt of these facts; take them with "
                "pre_edit_predictions(model, facts) on the same facts before editing"
            )
        return self.argmax[key]

    def covers_generation(self, keys: Sequence[GenKey]) -> bool:
        return all(k in self.generated for k in keys)


def keep_requests(model: Model, facts: Sequence[Fact]) -> tuple[list[Pair], list[GenKey]]:
    """The teacher-forced pairs and generation requests of every prompt that should not move."""
    prompts = [p for rows in plan(facts, EditedFacts()) for p in rows if p.kind in KEEP_KINDS]
    pairs = [_pair_ids(model, p.prompt, p.answer) for p in prompts]
    gens = [(prompt, len(answer)) for prompt, answer in pairs]  # a kept answer is compared over its own length
    return list(dict.fromkeys(pairs)), list(dict.fromkeys(gens))


def pre_edit_predictions(model: Model, facts: Sequence[Fact], session: EditSession | None = None,
                         batch_size: int = 32, generation: bool = True) -> PreEditPredictions:
    """The unedited model's predictions on the facts' specificity prompts (locality, neighbourhood,
    relation specificity): argmax tokens and, with ``generation``, greedy continuations.

    With a ``session`` the original weights are lent for the computation (any edits come back after),
    so this is correct even when edits are already applied. Without one, ``model`` must be unedited.
    """
    pairs, _ = keep_requests(model, facts)

    def compute() -> PreEditPredictions:
        scored = _score_ids(model, pairs, batch_size)
        items = [(p, a, scored[(p, a)].argmax.tolist(), len(a)) for p, a in pairs]
        generated = greedy_from_scores(model, items, batch_size=max(batch_size, 64)) if generation else {}
        return PreEditPredictions(model.fingerprint, {k: v.argmax.tolist() for k, v in scored.items()}, generated)

    if session is not None:
        with session.unedited():
            return compute()
    return compute()
