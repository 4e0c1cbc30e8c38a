"""MemFlex (KnowUnDo, Tian et al., 2024): locate the parameters that hold the knowledge to forget, then
unlearn with only those.

**Locate.** For every parameter group (each MLP / attention weight matrix of the candidate layers,
:func:`~knowscope.editing.unlearning.train.parameter_groups`) take the mean gradient of the answers' NLL
over the forget set, ``g_f``, and over the retain set, ``g_r``. A group is a place of the knowledge to
forget, and not of the knowledge to keep, when

1. the two gradients point in different directions: ``cos(g_f, g_r) < sim_threshold`` (KnowUnDo's μ); and
2. the forget gradient there is large: its mean ``|g_f|`` is at least the ``grad_quantile`` quantile of all
   groups' (KnowUnDo's σ is an absolute threshold for its LoRA matrices; a quantile carries over between
   models of different scale);

and, of the groups that pass, the ``max_groups`` whose forget saliency dominates most (the largest ratio
``mean|g_f| / mean|g_r|``) are kept. KnowUnDo computes the gradients of a random-label loss on LoRA
adapters; knowscope takes them on the model's own weights, with the true answers (the knowledge itself).

**Unlearn.** Only the located groups are trained, with one of the objectives of
:mod:`~knowscope.editing.unlearning.methods` (``objective``: ``"ga"``, gradient ascent on the forget
answers, the default; ``"relearn"``, learning other answers, the closest to KnowUnDo's random-label
training; ``"npo"``, the one ``benchmarks/bench_unlearning.py`` chose on its tuning half, with the whole
given retain set in each step and ``stop_retain=1``) plus the retain NLL, under the shared stop rule.
Everything else stays bit for bit as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.guards import TrainableWeights
from knowscope.editing.session import EditResult
from knowscope.editing.unlearning.data import UnlearnItem, check_sets
from knowscope.editing.unlearning.methods import (
    ReLearnHyperParams,
    ga_loss,
    npo_loss,
    relearn_objective,
)
from knowscope.editing.unlearning.train import Pair, _check, encode, mean_nll, parameter_groups, run_training
from knowscope.models import Model

logger = logging.getLogger(__name__)

OBJECTIVES = ("relearn", "ga", "npo")


@dataclass(frozen=True)
class MemFlexHyperParams(ReLearnHyperParams):
    """MemFlex: the locate step's ``sim_threshold`` / ``grad_quantile`` / ``max_groups`` (module docstring),
    the ``objective`` the located groups are trained with (ReLearn's fields configure ``"relearn"``, ``beta``
    configures ``"npo"``) and ``grad_batch`` items per gradient pass of the locate step."""

    objective: str = "ga"
    sim_threshold: float = 0.92
    grad_quantile: float = 0.5
    max_groups: int = 12
    beta: float = 0.1
    grad_batch: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.objective in OBJECTIVES, "objective", self.objective, f"one of {OBJECTIVES}")
        _check(-1 <= self.sim_threshold <= 1, "sim_threshold", self.sim_threshold, "in [-1, 1]")
        _check(0 <= self.grad_quantile <= 1, "grad_quantile", self.grad_quantile, "in [0, 1]")
        _check(self.max_groups >= 1, "max_groups", self.max_groups, ">= 1")
        _check(self.beta > 0, "beta", self.beta, "> 0")
        _check(self.grad_batch >= 1, "grad_batch", self.grad_batch, ">= 1")


@dataclass
class Localization:
    """What the locate step measured per parameter group, and which groups it chose."""

    names: list[str]
    cosine: list[float]
    forget_saliency: list[float]
    retain_saliency: list[float]
    chosen: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [{"name": n, "cosine": c, "forget_saliency": f, "retain_saliency": r,
                 "ratio": f / r if r > 0 else float("inf"), "chosen": n in self.chosen}
                for n, c, f, r in zip(self.names, self.cosine, self.forget_saliency, self.retain_saliency,
                                      strict=True)]


def group_gradients(model: Model, names: Sequence[str], pairs: Sequence[Pair],
                    batch: int = 16) -> dict[str, Float[Tensor, "..."]]:
    """Mean over ``pairs`` of the gradient of each pair's mean answer NLL, for each named parameter (the
    weights are left as they were, their gradients dropped)."""
    total: dict[str, Tensor] = {}
    with TrainableWeights(model, list(names)) as tw:
        for start in range(0, len(pairs), batch):
            chunk = list(pairs[start : start + batch])
            for p in tw.params.values():
                p.grad = None
            (mean_nll(model, chunk) * len(chunk)).backward()
            for n, p in tw.params.items():
                g = p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
                total[n] = total[n] + g if n in total else g.clone()
    return {n: g / len(pairs) for n, g in total.items()}


def locate_groups(forget_grads: dict[str, Tensor], retain_grads: dict[str, Tensor], sim_threshold: float = 0.92,
                  grad_quantile: float = 0.5, max_groups: int = 12) -> Localization:
    """The groups where the forget gradient dominates (module docstring), from per-group gradients."""
    names = [n for n in forget_grads if n in retain_grads]
    if not names:
        raise ValueError("no parameter group has both a forget and a retain gradient")
    cos, sf, sr = [], [], []
    for n in names:
        f, r = forget_grads[n].flatten().float(), retain_grads[n].flatten().float()
        denom = float(f.norm() * r.norm())
        cos.append(float(f @ r) / denom if denom > 0 else 0.0)
        sf.append(float(f.abs().mean()))
        sr.append(float(r.abs().mean()))
    floor = float(torch.quantile(torch.tensor(sf, dtype=torch.float64), grad_quantile))
    passing = [i for i in range(len(names)) if cos[i] < sim_threshold and sf[i] >= floor and sf[i] > 0]
    passing.sort(key=lambda i: sf[i] / sr[i] if sr[i] > 0 else float("inf"), reverse=True)
    chosen = [names[i] for i in sorted(passing[:max_groups])]
    return Localization(names=names, cosine=cos, forget_saliency=sf, retain_saliency=sr, chosen=chosen)


def locate(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem],
           hp: MemFlexHyperParams | None = None) -> Localization:
    """MemFlex's locate step on ``model``: gradients of the forget and retain answers' NLL per group."""
    hp = hp or MemFlexHyperParams()
    check_sets(forget, retain)
    if not retain:
        raise ValueError("MemFlex needs a retain set: it locates where the forget gradients dominate the retain ones")
    names = parameter_groups(model, hp.modules, hp.layers)
    g_f = group_gradients(model, names, encode(model, forget), hp.grad_batch)
    g_r = group_gradients(model, names, encode(model, retain), hp.grad_batch)
    loc = locate_groups(g_f, g_r, hp.sim_threshold, hp.grad_quantile, hp.max_groups)
    if not loc.chosen:
        raise ValueError(f"MemFlex located no parameter group among {len(names)} (sim_threshold {hp.sim_threshold}, "
                         f"grad_quantile {hp.grad_quantile}): raise sim_threshold or lower grad_quantile")
    logger.info("MemFlex located %d of %d groups: %s", len(loc.chosen), len(names), loc.chosen)
    return loc


def edit(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem] = (),
         hparams: MemFlexHyperParams | None = None, **_: Any) -> EditResult:
    """Unlearn ``forget`` while keeping ``retain``, training only the located parameter groups."""
    hp = hparams or MemFlexHyperParams.for_model(model)
    loc = locate(model, forget, retain, hp)
    forget_pairs = encode(model, forget)
    extra: dict[str, Any] = {"located": loc.chosen, "localization": loc.rows()}
    if hp.objective == "ga":
        loss = ga_loss(forget_pairs, hp)
    elif hp.objective == "npo":
        loss = npo_loss(model, forget_pairs, hp)  # type: ignore[arg-type]  # has beta
    else:
        loss, aug = relearn_objective(model, forget, retain, hp)
        extra["n_augmented"] = len(aug)
    return run_training(model, "memflex", forget, retain, loc.chosen, hp, loss, extra=extra)
