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

``granularity="neuron"`` applies the same three rules to MLP neurons instead of whole matrices: neuron
``j`` of a layer is its row of the input projections and its column of the output projection (the axis of
length ``d_mlp``), its gradient the concatenation of those, and the ``max_neurons`` that pass are the only
entries trained. A matrix's gradient mixes every neuron's, so a matrix where one subject's neurons sit is
also where the neighbours' are; a neuron that fires for the forget subjects and not for the retain ones
might change without moving them. On the bundled set it does not help (docs/findings.md): the same-answer
neighbours that were not given are lost at either granularity.

**Unlearn.** Only the located groups are trained, with one of the objectives of
:mod:`~knowscope.editing.unlearning.methods` (``objective``: ``"npo"``, the default, the one
``benchmarks/bench_unlearning.py`` chose on its tuning half, there with the whole given retain set in each
step and ``stop_retain=1``; ``"ga"``, gradient ascent on the forget answers; ``"relearn"``, learning other
answers, the closest to KnowUnDo's random-label training) plus the retain NLL, under the shared stop rule.
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
from knowscope.editing.unlearning.train import (
    _BLOCK,
    Pair,
    _check,
    encode,
    mean_nll,
    parameter_groups,
    run_training,
)
from knowscope.models import Model

logger = logging.getLogger(__name__)

OBJECTIVES = ("relearn", "ga", "npo")
GRANULARITIES = ("matrix", "neuron")


@dataclass(frozen=True)
class MemFlexHyperParams(ReLearnHyperParams):
    """MemFlex: the locate step's ``sim_threshold`` / ``grad_quantile`` / ``max_groups`` (module docstring),
    the ``objective`` the located groups are trained with (ReLearn's fields configure ``"relearn"``, ``beta``
    configures ``"npo"``) and ``grad_batch`` items per gradient pass of the locate step."""

    objective: str = "npo"
    sim_threshold: float = 0.92
    grad_quantile: float = 0.5
    max_groups: int = 12
    beta: float = 0.1
    grad_batch: int = 16
    granularity: str = "matrix"
    max_neurons: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.objective in OBJECTIVES, "objective", self.objective, f"one of {OBJECTIVES}")
        _check(-1 <= self.sim_threshold <= 1, "sim_threshold", self.sim_threshold, "in [-1, 1]")
        _check(0 <= self.grad_quantile <= 1, "grad_quantile", self.grad_quantile, "in [0, 1]")
        _check(self.max_groups >= 1, "max_groups", self.max_groups, ">= 1")
        _check(self.beta > 0, "beta", self.beta, "> 0")
        _check(self.grad_batch >= 1, "grad_batch", self.grad_batch, ">= 1")
        _check(self.granularity in GRANULARITIES, "granularity", self.granularity, f"one of {GRANULARITIES}")
        _check(self.max_neurons >= 1, "max_neurons", self.max_neurons, ">= 1")
        _check(self.granularity == "matrix" or self.modules == ("mlp",), "modules", self.modules,
               "('mlp',) with granularity 'neuron' (neurons are the MLP's)")

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> MemFlexHyperParams:
        """The setting ``benchmarks/bench_unlearning.py`` chose on the bundled set's tuning half: the NPO
        objective, the whole given retain set (up to 32 items) in every step, and the stop rule that waits
        for it (``stop_retain`` 1.0 within 30 steps: stopping at the first forgotten step catches the model at
        its worst). ``overrides`` win; ``stop_forget=None`` (run every step) drops ``stop_retain``."""
        chosen: dict[str, Any] = {"retain_batch": 32, "stop_retain": 1.0, "max_steps": 30}
        if "stop_forget" in overrides and overrides["stop_forget"] is None:
            chosen.pop("stop_retain")
        return super().for_model(model, **{**chosen, **overrides})  # type: ignore[return-value]


@dataclass
class Localization:
    """What the locate step measured per parameter group, and which groups it chose."""

    names: list[str]
    cosine: list[float]
    forget_saliency: list[float]
    retain_saliency: list[float]
    chosen: list[str] = field(default_factory=list)
    #: granularity "neuron": the chosen neurons per layer (the groups above are then that layer's matrices)
    neurons: dict[int, list[int]] = field(default_factory=dict)

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


def _neuron_axis(name: str, shape: Sequence[int], d_mlp: int) -> int:
    axes = [i for i, n in enumerate(shape) if n == d_mlp]
    if len(axes) != 1:
        raise ValueError(f"{name}: cannot tell the neuron axis of a {tuple(shape)} matrix (d_mlp {d_mlp}); "
                         "use granularity 'matrix'")
    return axes[0]


def neuron_gradients(grads: dict[str, Tensor], d_mlp: int) -> dict[int, Float[Tensor, "d_mlp k"]]:
    """Per layer, each MLP neuron's gradient: its rows / columns of that layer's MLP matrices, concatenated."""
    parts: dict[int, list[Tensor]] = {}
    for name in sorted(grads):
        m = _BLOCK.search(name)
        if m is None:
            raise ValueError(f"{name} is not a block's weight matrix")
        g = grads[name]
        parts.setdefault(int(m.group(1)), []).append(g.movedim(_neuron_axis(name, g.shape, d_mlp), 0)
                                                      .reshape(d_mlp, -1))
    return {layer: torch.cat(v, dim=1) for layer, v in parts.items()}


def locate_neurons(forget_grads: dict[str, Tensor], retain_grads: dict[str, Tensor], d_mlp: int,
                   sim_threshold: float = 0.92, grad_quantile: float = 0.5, max_neurons: int = 512) -> Localization:
    """MemFlex's rules (module docstring) applied to MLP neurons; the groups reported are the matrices of
    the layers that hold a chosen neuron."""
    loc = locate_groups(forget_grads, retain_grads, sim_threshold, grad_quantile, max_groups=len(forget_grads))
    f, r = neuron_gradients(forget_grads, d_mlp), neuron_gradients(retain_grads, d_mlp)
    layers = sorted(f)
    cos = torch.cat([torch.nn.functional.cosine_similarity(f[x].float(), r[x].float(), dim=1) for x in layers])
    sf = torch.cat([f[x].float().abs().mean(1) for x in layers])
    sr = torch.cat([r[x].float().abs().mean(1) for x in layers])
    floor = torch.quantile(sf.double(), grad_quantile).float()
    ok = (cos < sim_threshold) & (sf >= floor) & (sf > 0)
    ratio = torch.where(sr > 0, sf / sr.clamp_min(torch.finfo(torch.float32).tiny), torch.full_like(sf, float("inf")))
    ratio = torch.where(ok, ratio, torch.full_like(ratio, -1.0))
    top = torch.argsort(ratio, descending=True)[: min(max_neurons, int(ok.sum()))]
    neurons: dict[int, list[int]] = {}
    for flat in sorted(top.tolist()):
        neurons.setdefault(layers[flat // d_mlp], []).append(flat % d_mlp)
    loc.neurons = neurons
    loc.chosen = [n for n in loc.names if (m := _BLOCK.search(n)) and int(m.group(1)) in neurons]
    return loc


def neuron_masks(params: dict[str, Tensor], loc: Localization, d_mlp: int) -> dict[str, Tensor]:
    """Per chosen matrix, True at the entries of the chosen neurons (the only entries trained)."""
    out = {}
    for name in loc.chosen:
        m = _BLOCK.search(name)
        shape = params[name].shape
        axis = _neuron_axis(name, shape, d_mlp)
        keep = torch.zeros(d_mlp, dtype=torch.bool)
        keep[loc.neurons[int(m.group(1))]] = True  # type: ignore[union-attr]  # chosen names match _BLOCK
        out[name] = keep.reshape([-1 if i == axis else 1 for i in range(len(shape))]).expand(shape)
    return out


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
    if hp.granularity == "neuron":
        loc = locate_neurons(g_f, g_r, model.arch.d_mlp, hp.sim_threshold, hp.grad_quantile, hp.max_neurons)
    else:
        loc = locate_groups(g_f, g_r, hp.sim_threshold, hp.grad_quantile, hp.max_groups)
    if not loc.chosen:
        raise ValueError(f"MemFlex located no parameter group among {len(names)} (sim_threshold {hp.sim_threshold}, "
                         f"grad_quantile {hp.grad_quantile}): raise sim_threshold or lower grad_quantile")
    logger.info("MemFlex located %d of %d groups: %s%s", len(loc.chosen), len(names), loc.chosen,
                f" ({sum(map(len, loc.neurons.values()))} neurons)" if loc.neurons else "")
    return loc


def edit(model: Model, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem] = (),
         hparams: MemFlexHyperParams | None = None, **_: Any) -> EditResult:
    """Unlearn ``forget`` while keeping ``retain``, training only the located parameter groups."""
    hp = hparams or MemFlexHyperParams.for_model(model)
    loc = locate(model, forget, retain, hp)
    forget_pairs = encode(model, forget)
    extra: dict[str, Any] = {"located": loc.chosen, "localization": loc.rows()}
    masks = None
    if hp.granularity == "neuron":
        masks = neuron_masks(model.named_parameters(), loc, model.arch.d_mlp)
        extra["neurons"] = {str(k): v for k, v in loc.neurons.items()}
    if hp.objective == "ga":
        loss = ga_loss(forget_pairs, hp)
    elif hp.objective == "npo":
        loss = npo_loss(model, forget_pairs, hp)  # type: ignore[arg-type]  # has beta
    else:
        loss, aug = relearn_objective(model, forget, retain, hp)
        extra["n_augmented"] = len(aug)
    return run_training(model, "memflex", forget, retain, loc.chosen, hp, loss, extra=extra, masks=masks)
