"""Unlearning: make a model stop giving what a forget set asks while it keeps a retain set.

Four methods behind one signature, ``edit(model, forget, retain, hparams=None)`` returning an
:class:`~knowscope.editing.session.EditResult` of weight deltas (undo / save / load through ``EditSession``):
gradient ascent and NPO (the baselines), ReLearn (learning other answers on augmented prompts) and
MemFlex (only the parameter groups where the forget gradients dominate the retain ones are trained), and
keyed forgetting (:mod:`.keyed`: one FactKey side-memory entry per forget fact, answering something else).
:mod:`.data` holds the forget / retain sets (KnowUnDo's JSON layout), :mod:`.metrics` the scores
(ReLearn's KFR / KRR, KnowUnDo's success rates, generation checks, fluency and relevance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knowscope.editing.session import EditResult
from knowscope.editing.unlearning import keyed, memflex, methods
from knowscope.editing.unlearning.data import (
    UnlearnFormatError,
    UnlearnItem,
    UnlearnSet,
    load_bundled_unlearn,
    load_unlearn_set,
)
from knowscope.editing.unlearning.keyed import KeyedHyperParams
from knowscope.editing.unlearning.memflex import Localization, MemFlexHyperParams, locate
from knowscope.editing.unlearning.methods import GAHyperParams, NPOHyperParams, ReLearnHyperParams
from knowscope.editing.unlearning.metrics import (
    UnlearnMetrics,
    UnlearnReference,
    evaluate_unlearning,
    unlearn_reference,
)
from knowscope.editing.unlearning.train import UnlearnHyperParams, parameter_groups


@dataclass(frozen=True)
class Unlearner:
    """One unlearning method: its function and its hyperparameter class."""

    name: str
    label: str
    edit: Callable[..., EditResult]
    hparams: type


UNLEARNERS: dict[str, Unlearner] = {
    "ga": Unlearner("ga", "Gradient ascent", methods.edit_ga, GAHyperParams),
    "npo": Unlearner("npo", "NPO", methods.edit_npo, NPOHyperParams),
    "relearn": Unlearner("relearn", "ReLearn", methods.edit_relearn, ReLearnHyperParams),
    "memflex": Unlearner("memflex", "MemFlex", memflex.edit, MemFlexHyperParams),
    "keyed": Unlearner("keyed", "Keyed forgetting (FactKey)", keyed.edit, KeyedHyperParams),
}


def get_unlearner(name: str) -> Unlearner:
    """The unlearning method called ``name`` (case-insensitive): ga, npo, relearn, memflex, keyed."""
    key = str(name).lower()
    if key not in UNLEARNERS:
        raise ValueError(f"unknown unlearning method {name!r}; valid: {', '.join(UNLEARNERS)}")
    return UNLEARNERS[key]


__all__ = ["UNLEARNERS", "GAHyperParams", "KeyedHyperParams", "Localization", "MemFlexHyperParams",
           "NPOHyperParams",
           "ReLearnHyperParams", "UnlearnFormatError", "UnlearnHyperParams", "UnlearnItem", "UnlearnMetrics",
           "UnlearnReference",
           "UnlearnSet", "Unlearner", "evaluate_unlearning", "get_unlearner", "load_bundled_unlearn",
           "load_unlearn_set", "locate", "parameter_groups", "unlearn_reference"]
