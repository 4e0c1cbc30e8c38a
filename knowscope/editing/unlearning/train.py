"""What every unlearning method shares: the trainable parameters, teacher-forced answer losses, the
training loop with its stop rule, and the :class:`EditResult` it returns.

Unlearning here is a weight edit like FT: the chosen parameters (each MLP / attention matrix of the
chosen layers is one *parameter group*) are trained with Adam, and the change comes back as weight
deltas, so :class:`~knowscope.editing.session.EditSession` applies, undoes (bit for bit), saves and loads
it as any other edit. The model's weights are the same before and after a call (restored bit for bit,
also when training fails).

**The stop rule.** Every ``check_every`` steps the loop decodes the forget prompts greedily (the same
check the evaluation makes: does the continuation begin with the answer?) and stops once at least
``stop_forget`` of them no longer give their answer. So every method is stopped at the same forgetting
level, and what differs between methods is what that forgetting cost elsewhere (retention, fluency):
the comparison the benchmark makes. ``stop_forget=None`` runs ``max_steps`` steps. With ``stop_retain``
set, the loop also decodes the retain prompts it was given and stops only once both hold: the forget
prompts are forgotten *and* at least ``stop_retain`` of the given retain prompts still give their answer.
Forgetting comes first and fast (a step or two of Adam moves every trained weight by about ``lr``),
taking neighbours along; the retain term repairs them over the next steps, so stopping at the first
forgotten step catches the model at its worst for retention.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.evaluation.generation import begins_with, decode, greedy_continuations
from knowscope.editing.guards import TrainableWeights
from knowscope.editing.session import EditResult
from knowscope.editing.unlearning.data import UnlearnItem, check_sets
from knowscope.editing.unlearning.projection import project_deltas, retain_projectors
from knowscope.models import Model
from knowscope.progress import progress_bar

logger = logging.getLogger(__name__)

MODULES = ("mlp", "attn")
_BLOCK = re.compile(r"(?:^|\.)(?:h|layers)\.(\d+)\.(mlp|attn|self_attn)\.")

Pair = tuple[tuple[int, ...], tuple[int, ...]]  # (BOS-prepended prompt ids, answer ids)


@dataclass(frozen=True)
class UnlearnHyperParams:
    """Settings every unlearning method shares.

    ``modules`` / ``layers``: the parameter groups that may change (every weight matrix of those blocks'
    MLPs and / or attentions; ``layers=None``: every layer). ``retain_weight``: weight of the retain set's
    NLL (gradient descent on what to keep); ``retain_batch`` retain items per step. ``stop_forget``: stop
    once this fraction of the forget prompts no longer generate their answer (module docstring);
    ``stop_retain``: and (when set) once this fraction of the given retain prompts still do.
    ``norm_constraint``: optional L-inf bound on each weight's change, as FT-L. ``retain_projection``: when
    set (a share of energy in (0, 1]), each trained matrix's change is confined after every step to the
    input directions the retain sequences do not use (:mod:`.projection`); ``None`` (the default) trains
    freely.
    """

    lr: float = 1e-4
    max_steps: int = 20
    retain_weight: float = 1.0
    retain_batch: int = 8
    stop_forget: float | None = 1.0
    stop_retain: float | None = None
    check_every: int = 1
    modules: tuple[str, ...] = ("mlp",)
    layers: tuple[int, ...] | None = None
    norm_constraint: float | None = None
    retain_projection: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(isinstance(self.max_steps, int) and self.max_steps >= 1, "max_steps", self.max_steps, "an integer >= 1")
        _check(self.retain_weight >= 0, "retain_weight", self.retain_weight, ">= 0")
        _check(self.retain_batch >= 1, "retain_batch", self.retain_batch, ">= 1")
        _check(self.stop_forget is None or 0 < self.stop_forget <= 1, "stop_forget", self.stop_forget,
               "None or in (0, 1]")
        _check(self.stop_retain is None or (0 < self.stop_retain <= 1 and self.stop_forget is not None),
               "stop_retain", self.stop_retain, "None, or in (0, 1] with stop_forget set")
        _check(self.check_every >= 1, "check_every", self.check_every, ">= 1")
        _check(len(self.modules) >= 1 and all(m in MODULES for m in self.modules), "modules", self.modules,
               f"a non-empty subset of {MODULES}")
        _check(self.norm_constraint is None or self.norm_constraint > 0, "norm_constraint", self.norm_constraint,
               "None or > 0")
        _check(self.retain_projection is None or 0 < self.retain_projection <= 1, "retain_projection",
               self.retain_projection, "None or in (0, 1]")

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> UnlearnHyperParams:
        """The defaults (the same for every model so far), with ``overrides``; lists become tuples."""
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return cls(**fixed)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def parameter_groups(model: Model, modules: Sequence[str] = ("mlp",),
                     layers: Sequence[int] | None = None) -> list[str]:
    """HF names of the weight matrices of ``modules`` (``"mlp"``, ``"attn"``) in ``layers`` (None: all), in
    model order: the parameter groups unlearning may train and MemFlex chooses among."""
    n = model.arch.n_layers
    chosen = set(range(n)) if layers is None else {model.arch.check_layer(int(x)) for x in layers}
    out = []
    for name, p in model.named_parameters().items():
        m = _BLOCK.search(name)
        if m is None or p.ndim != 2:
            continue
        kind = "mlp" if m.group(2) == "mlp" else "attn"
        if int(m.group(1)) in chosen and kind in modules:
            out.append(name)
    if not out:
        raise ValueError(f"no {'/'.join(modules)} weight matrices in layers {sorted(chosen)} of {model.name!r}")
    return out


def encode(model: Model, items: Sequence[UnlearnItem]) -> list[Pair]:
    """(prompt ids with BOS, answer ids) of each item."""
    out = []
    for it in items:
        answer = tuple(model.encode_target(it.continuation))
        if not answer:
            raise ValueError(f"the answer {it.answer!r} of {it.prompt!r} tokenizes to nothing")
        out.append((tuple(int(t) for t in model.to_tokens(it.prompt)[0]), answer))
    return out


def answer_logprobs(model: Model, pairs: Sequence[Pair]) -> list[Float[Tensor, "n_answer vocab"]]:
    """Log-softmax over the vocabulary at each answer position of each pair (one right-padded pass)."""
    seqs = [(p + a)[:-1] for p, a in pairs]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), model.pad_token_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        tokens[row, : len(s)] = torch.tensor(s)
    logits = model(tokens.to(model.device))
    out = []
    for row, (p, a) in enumerate(pairs):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(a), device=logits.device)
        out.append(torch.log_softmax(logits[row, pos].float(), dim=-1))
    return out


def sequence_logprob(rows: Sequence[Tensor], pairs: Sequence[Pair]) -> Float[Tensor, " n"]:
    """Sum of the answer tokens' log-probabilities of each pair."""
    out = []
    for lp, (_, a) in zip(rows, pairs, strict=True):
        out.append(lp.gather(1, torch.tensor(a, device=lp.device)[:, None]).sum())
    return torch.stack(out)


def mean_nll(model: Model, pairs: Sequence[Pair]) -> Float[Tensor, ""]:
    """Mean over pairs of the mean token NLL of the answer (FT's loss)."""
    rows = answer_logprobs(model, pairs)
    lens = torch.tensor([len(a) for _, a in pairs], dtype=torch.float32, device=rows[0].device)
    return (-sequence_logprob(rows, pairs) / lens).mean()


@torch.no_grad()
def forgotten_fraction(model: Model, pairs: Sequence[Pair], items: Sequence[UnlearnItem]) -> float:
    """Share of the forget prompts whose greedy continuation no longer begins with their answer."""
    reqs = [(p, len(a) + 2) for p, a in pairs]
    conts = greedy_continuations(model, reqs)
    gone = [not begins_with(decode(model, conts[r]), it.answer) for r, it in zip(reqs, items, strict=True)]
    return sum(gone) / len(gone)


#: a method's loss on one step: (model, step, retain pairs of this step) -> (loss, logged parts)
LossFn = Callable[[Model, int, list[Pair]], tuple[Tensor, dict[str, float]]]


def retain_sampler(retain: Sequence[Pair], hp: UnlearnHyperParams) -> Callable[[int], list[Pair]]:
    """The retain pairs of each step: ``retain_batch`` of them, cycling through a seeded permutation."""
    order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(hp.seed)).tolist()

    def pick(step: int) -> list[Pair]:
        if not order:
            return []
        k = min(hp.retain_batch, len(order))
        start = (step * k) % len(order)
        idx = (order + order)[start : start + k]
        return [retain[i] for i in idx]

    return pick


def run_training(model: Model, method: str, forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem],
                 names: Sequence[str], hp: UnlearnHyperParams, loss_fn: LossFn,
                 extra: dict[str, Any] | None = None, masks: dict[str, Tensor] | None = None) -> EditResult:
    """Train ``names`` with ``loss_fn`` until the stop rule holds; return the weight change as an EditResult.

    ``masks`` (name -> bool, the parameter's shape): only the True entries change; the rest are put back to
    their saved values after every step (MemFlex's neuron granularity)."""
    check_sets(forget, retain)
    forget_pairs = encode(model, forget)
    retain_pairs = encode(model, retain)
    pick = retain_sampler(retain_pairs, hp)
    start = time.perf_counter()
    projectors = None
    if hp.retain_projection is not None:
        projectors = retain_projectors(model, names, retain_pairs, hp.retain_projection)
    history: list[dict[str, float]] = []
    watch_retain = hp.stop_retain is not None and bool(retain_pairs)

    def measure() -> tuple[float, float | None]:
        gone = forgotten_fraction(model, forget_pairs, forget)
        return gone, (1 - forgotten_fraction(model, retain_pairs, retain)) if watch_retain else None

    def done() -> bool:
        if hp.stop_forget is None or forgot < hp.stop_forget:
            return False
        return kept is None or hp.stop_retain is None or kept >= hp.stop_retain

    forgot, kept = measure()
    bar = progress_bar(total=hp.max_steps, desc=method, unit="step", leave=False, disable=None)  # a terminal only
    with bar, TrainableWeights(model, list(names)) as tw:
        opt = torch.optim.Adam(list(tw.params.values()), lr=hp.lr)
        step = 0
        while step < hp.max_steps:
            if done():
                break
            opt.zero_grad(set_to_none=True)
            loss, parts = loss_fn(model, step, pick(step) if hp.retain_weight > 0 else [])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method}: the loss became {loss.item()} at step {step}; lower lr")
            loss.backward()
            opt.step()
            if projectors is not None:
                project_deltas(tw.params, tw.saved, projectors)
            if masks:
                with torch.no_grad():
                    for n, keep in masks.items():
                        p = tw.params[n]
                        p.copy_(torch.where(keep.to(p.device), p, tw.saved[n]))
            if hp.norm_constraint is not None:
                tw.clamp(hp.norm_constraint)
            step += 1
            if step % hp.check_every == 0 or step == hp.max_steps:
                forgot, kept = measure()
            history.append({"step": step, "loss": float(loss.item()), "forgotten": forgot,
                            **({"retain_kept": kept} if kept is not None else {}), **parts})
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", forgotten=f"{forgot:.2f}", refresh=False)
            logger.debug("%s step %d: loss %.4f, forgotten %.2f", method, step, loss.item(), forgot)
        deltas = tw.deltas()
    seconds = time.perf_counter() - start
    logger.info("%s: %d steps on %d parameter groups, forgotten %.2f of %d, %.1f s", method, len(history),
                len(names), forgot, len(forget), seconds)
    layers = sorted({int(m.group(1)) for n in names if (m := _BLOCK.search(n))})
    return EditResult(
        method=method,
        deltas={k: v.cpu() for k, v in deltas.items()},
        fingerprint=model.fingerprint,
        layers=layers,
        hparams=hp.to_dict(),
        requests=[i.to_knowundo() for i in forget],
        model_name=model.name,
        seconds=seconds,
        extra={"retain": [i.to_knowundo() for i in retain], "steps": len(history), "forgotten_train": forgot,
               "retain_kept_train": kept,
               "history": history, **(extra or {})},
    )
