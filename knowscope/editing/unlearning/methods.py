"""Unlearning by gradient ascent, NPO and ReLearn: three objectives on the same parameters and loop.

* **Gradient ascent** (GA): maximise the forget answers' NLL, optionally plus the retain set's NLL
  (``retain_weight``; 0 is plain GA, > 0 is the "gradient difference" variant).
* **NPO** (Zhang et al., 2024): ``(2/β) · mean softplus(β · (log π(a|q) − log π_ref(a|q)))`` over the forget
  items, with the unedited model as reference; bounded where GA is not (once the answer's probability is
  well below the reference's the loss flattens), plus the retain NLL.
* **ReLearn** (Xu et al., 2025): no reverse optimisation at all. The model *learns* answers that do not
  carry the forgotten knowledge on augmented forget prompts, plus the retain NLL and a KL term that keeps
  the retain prompts' next-token distributions at the unedited model's. ReLearn builds its augmented data
  with an LLM; here it is built without one (:func:`augment`): each forget prompt in ``len(PROMPT_TEMPLATES)``
  wordings (the prompt itself and fixed prefixes such as ``"Fact: "``), each paired with the unedited
  model's own ``n_alternatives`` most likely next words that are not the answer (plausible answers of the
  same kind, so what the model says instead stays on topic) and the ``vague_answers`` (a fixed non-answer).

Each editor has the signature ``edit(model, forget, retain, hparams=None)`` and returns an
:class:`~knowscope.editing.session.EditResult` (weight deltas); the model is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from knowscope.editing.evaluation.generation import begins_with, normalize
from knowscope.editing.session import EditResult
from knowscope.editing.unlearning.data import UnlearnItem, check_sets
from knowscope.editing.unlearning.train import (
    LossFn,
    Pair,
    UnlearnHyperParams,
    _check,
    answer_logprobs,
    encode,
    mean_nll,
    parameter_groups,
    run_training,
    sequence_logprob,
)
from knowscope.models import Model

PROMPT_TEMPLATES = ("{}", "Fact: {}", "Complete the sentence. {}", "Here is what I know: {}")


@dataclass(frozen=True)
class GAHyperParams(UnlearnHyperParams):
    """Gradient ascent: plain (``retain_weight=0``, the default) or with the retain NLL."""

    retain_weight: float = 0.0


@dataclass(frozen=True)
class NPOHyperParams(UnlearnHyperParams):
    """NPO: ``beta`` is the inverse temperature of the preference loss (NPO's 0.1 by default)."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.beta > 0, "beta", self.beta, "> 0")


@dataclass(frozen=True)
class ReLearnHyperParams(UnlearnHyperParams):
    """ReLearn: ``n_alternatives`` of the model's own other answers per prompt, ``vague_answers`` added to
    them, ``aug_batch`` augmented pairs per step, ``kl_weight`` on the retain prompts' KL to the unedited
    model."""

    n_alternatives: int = 2
    vague_answers: tuple[str, ...] = ("not something I know",)
    aug_batch: int = 16
    kl_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.n_alternatives >= 0, "n_alternatives", self.n_alternatives, ">= 0")
        _check(self.n_alternatives > 0 or len(self.vague_answers) > 0, "n_alternatives", self.n_alternatives,
               "> 0 when there are no vague_answers")
        _check(self.aug_batch >= 1, "aug_batch", self.aug_batch, ">= 1")
        _check(self.kl_weight >= 0, "kl_weight", self.kl_weight, ">= 0")


def _retain_term(model: Model, retain: list[Pair], hp: UnlearnHyperParams) -> tuple[Tensor, float]:
    if not retain or hp.retain_weight == 0:
        return torch.zeros((), device=model.device), 0.0
    nll = mean_nll(model, retain)
    return hp.retain_weight * nll, float(nll.item())


def ga_loss(forget: Sequence[Pair], hp: UnlearnHyperParams) -> LossFn:
    """``-NLL(forget) + retain_weight · NLL(retain)``."""
    def loss(model: Model, step: int, retain: list[Pair]) -> tuple[Tensor, dict[str, float]]:
        f = mean_nll(model, list(forget))
        r, r_val = _retain_term(model, retain, hp)
        return -f + r, {"forget_nll": float(f.item()), "retain_nll": r_val}

    return loss


@torch.no_grad()
def reference_logprobs(model: Model, pairs: Sequence[Pair]) -> Tensor:
    """The unedited model's summed answer log-probabilities (NPO's reference)."""
    return sequence_logprob(answer_logprobs(model, pairs), pairs).detach()


def npo_loss(model: Model, forget: Sequence[Pair], hp: NPOHyperParams) -> LossFn:
    """NPO on the forget pairs (reference taken now, on the weights as they are) + the retain NLL."""
    ref = reference_logprobs(model, forget)

    def loss(model: Model, step: int, retain: list[Pair]) -> tuple[Tensor, dict[str, float]]:
        logp = sequence_logprob(answer_logprobs(model, list(forget)), forget)
        npo = (2.0 / hp.beta) * F.softplus(hp.beta * (logp - ref)).mean()
        r, r_val = _retain_term(model, retain, hp)
        return npo + r, {"npo": float(npo.item()), "retain_nll": r_val}

    return loss


def _word_like(text: str) -> bool:
    word = text.strip()
    return len(word) >= 2 and word[0].isalpha() and text.startswith(" ")


@torch.no_grad()
def alternatives(model: Model, item: UnlearnItem, k: int) -> list[str]:
    """The unedited model's ``k`` most likely next words after ``item.prompt`` that do not give the answer
    (whole-word tokens with a leading space; the answer's own first token and its prefixes excluded)."""
    if k == 0:
        return []
    probs = model.next_token_probs(item.prompt)
    answer = normalize(item.answer)
    out: list[str] = []
    for tok in torch.argsort(probs, descending=True)[:200].tolist():
        text = model.tokenizer.decode([tok])
        word = normalize(text)
        if not _word_like(text) or begins_with(item.answer, word) or begins_with(text, item.answer) \
                or answer.startswith(word) or word in out:
            continue
        out.append(text.strip())
        if len(out) == k:
            break
    return out


def augment(model: Model, forget: Sequence[UnlearnItem], hp: ReLearnHyperParams) -> list[UnlearnItem]:
    """ReLearn's augmented forget data without an LLM (module docstring): prompt wordings x other answers."""
    out = []
    for item in forget:
        answers = alternatives(model, item, hp.n_alternatives) + list(hp.vague_answers)
        for template in PROMPT_TEMPLATES:
            for a in answers:
                out.append(replace(item, prompt=template.format(item.prompt), answer=a, kind="augmented",
                                   paraphrases=()))
    return out


def relearn_loss(model: Model, augmented: Sequence[Pair], retain_all: Sequence[Pair],
                 hp: ReLearnHyperParams) -> LossFn:
    """NLL of the augmented pairs (``aug_batch`` per step, cycling) + retain NLL + KL to the unedited model."""
    with torch.no_grad():
        ref = {pair: lp.detach() for pair, lp in zip(retain_all, answer_logprobs(model, list(retain_all)),
                                                     strict=True)} if retain_all and hp.kl_weight > 0 else {}
    order = torch.randperm(len(augmented), generator=torch.Generator().manual_seed(hp.seed)).tolist()

    def loss(model: Model, step: int, retain: list[Pair]) -> tuple[Tensor, dict[str, float]]:
        k = min(hp.aug_batch, len(order))
        start = (step * k) % len(order)
        batch = [augmented[i] for i in (order + order)[start : start + k]]
        learn = mean_nll(model, batch)
        total = learn
        parts = {"augmented_nll": float(learn.item())}
        if retain:
            rows = answer_logprobs(model, retain)
            lens = torch.tensor([len(a) for _, a in retain], dtype=torch.float32, device=rows[0].device)
            nll = (-sequence_logprob(rows, retain) / lens).mean()
            total = total + hp.retain_weight * nll
            parts["retain_nll"] = float(nll.item())
            if ref:
                kl = torch.stack([F.kl_div(lp, ref[p], log_target=True, reduction="batchmean")
                                  for lp, p in zip(rows, retain, strict=True)]).mean()
                total = total + hp.kl_weight * kl
                parts["retain_kl"] = float(kl.item())
        return total, parts

    return loss


def _params(model: Model, hp: UnlearnHyperParams) -> list[str]:
    return parameter_groups(model, hp.modules, hp.layers)


def edit_ga(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem] = (),
            hparams: GAHyperParams | None = None, **_: Any) -> EditResult:
    """Unlearn ``forget`` by gradient ascent on its answers (module docstring)."""
    hp = hparams or GAHyperParams.for_model(model)
    check_sets(forget, retain)
    return run_training(model, "ga", forget, retain, _params(model, hp), hp, ga_loss(encode(model, forget), hp))


def edit_npo(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem] = (),
             hparams: NPOHyperParams | None = None, **_: Any) -> EditResult:
    """Unlearn ``forget`` with NPO (module docstring)."""
    hp = hparams or NPOHyperParams.for_model(model)
    check_sets(forget, retain)
    return run_training(model, "npo", forget, retain, _params(model, hp), hp,
                        npo_loss(model, encode(model, forget), hp))


def relearn_objective(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem],
                      hp: ReLearnHyperParams) -> tuple[LossFn, list[UnlearnItem]]:
    """ReLearn's loss and the augmented items it trains on (MemFlex reuses it)."""
    aug = augment(model, forget, hp)
    return relearn_loss(model, encode(model, aug), encode(model, retain), hp), aug


def edit_relearn(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem] = (),
                 hparams: ReLearnHyperParams | None = None, **_: Any) -> EditResult:
    """Unlearn ``forget`` by learning other answers on augmented prompts (module docstring)."""
    hp = hparams or ReLearnHyperParams.for_model(model)
    check_sets(forget, retain)
    loss, aug = relearn_objective(model, forget, retain, hp)
    examples = sorted({a.answer for a in aug})
    return run_training(model, "relearn", forget, retain, _params(model, hp), hp, loss,
                        extra={"n_augmented": len(aug), "augmented_answers": examples[:50]})
