"""DINM: detoxify by tuning the toxic layer's MLP output projection (Wang et al., 2024, SafeEdit).

For one SafeEdit item:

1. locate its toxic layer with :func:`knowscope.circuits.locate_toxic` (per item; EasyEdit reuses
   the first item's layer for every later item);
2. train that layer's MLP output projection (``down_proj`` / ``c_proj``; its bias too where there
   is one) with Adam on

       loss = nll_weight · NLL(safe generation | adversarial prompt)  +  kl_weight · KL_tok(unedited ‖ edited)

   where the NLL is the mean over the safe response's tokens and KL_tok is the per-token KL of the
   next-token distributions over the knowledge constraint's answer tokens (prompt and answer in
   the chat template), averaged over those tokens; the unedited distributions are taken once
   before training. Training stops after ``num_steps`` or when the loss is below
   ``early_stop_loss``; with ``norm_constraint`` the weight change is clamped elementwise.

The weighting, knowscope's default beside EasyEdit's DINM (``hparams/DINM/llama-7b.yaml``,
``dinm_main.py``): ``nll_weight`` 1.0 (EasyEdit: ``kl_factor`` = 0.1 multiplies the NLL),
``kl_weight`` 1.0 (EasyEdit: 1.0), ``kl_grad`` True (EasyEdit: False - its post-edit logits are
computed under ``no_grad``, so the KL only enters the early-stopping test and never constrains the
update; its update is that of 0.1 · NLL, which under Adam - invariant to the loss's scale - is
nearly that of plain NLL fine-tuning).
:meth:`DINMHyperParams.easyedit` gives EasyEdit's weighting exactly.

Differences from EasyEdit's code, on purpose: the KL term reaches the gradient by default (see
above; a knowledge constraint that cannot constrain is not one), and no suffix
system prompt is appended (EasyEdit appends one to the training input and to every post-edit
evaluation input but not to the pre-edit ones). The result is an :class:`EditResult`; the model's
weights are unchanged when :func:`edit` returns or raises.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.chat import pair_ids
from knowscope.circuits.toxic import locate_toxic
from knowscope.editing.guards import TrainableWeights, mlp_out_parameters
from knowscope.editing.hparams import is_smollm2_135m
from knowscope.editing.session import EditResult
from knowscope.models import Model
from knowscope.safeedit import SafetyItem
from knowscope.work import OnUnit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DINMHyperParams:
    """DINM's settings. ``layer=None`` locates the toxic layer per item (``locate_distance`` /
    ``locate_context`` go to :func:`~knowscope.circuits.locate_toxic`)."""

    layer: int | None = None
    lr: float = 5e-4
    num_steps: int = 10
    nll_weight: float = 1.0  # EasyEdit: kl_factor = 0.1 (it multiplies the NLL there)
    kl_weight: float = 1.0  # EasyEdit: 1.0
    kl_grad: bool = True  # EasyEdit: False (KL under no_grad: in the loss value, not in the update)
    norm_constraint: float | None = None
    early_stop_loss: float = 1e-4
    locate_distance: str = "l2"
    locate_context: str = "none"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.nll_weight <= 0:
            raise ValueError(f"nll_weight must be > 0, got {self.nll_weight}")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError(f"norm_constraint must be > 0 or None, got {self.norm_constraint}")

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> DINMHyperParams:
        """Defaults: SafeEdit's LLaMA-2 settings (Adam, lr 5e-4, 10 steps); for SmolLM2-135M lr 3e-4
        (on 4 items lr 5e-4 cost 5.1 points of bundled-fact accuracy and 10% fluency; 3e-4 is the
        setting ``benchmarks/bench_detox.py`` measures over the whole bundled set)."""
        base = cls(lr=3e-4) if is_smollm2_135m(model) else cls()
        return replace(base, **overrides)

    @classmethod
    def for_probe_layer(cls, model: Model, **overrides: Any) -> DINMHyperParams:
        """Defaults for an edit at the layer the held-out probe locates (``knowscope detox``'s default):
        for SmolLM2-135M lr 1e-3, chosen at that layer (11) on 8 tuning items over lr 3e-4 / 5e-4 / 1e-3
        and 10 / 20 steps (the only settings there with DS >= 0.9 and over-refusal within +5 points);
        on 9 held-out items DS 0.000 -> 1.000, over-refusal 0.050 -> 0.086, bundled-fact accuracy
        1.000 -> 0.934 (lr 3e-4: DS 0.667; docs/findings.md). Other models: :meth:`for_model`."""
        base = cls.for_model(model)
        if is_smollm2_135m(model):
            base = replace(base, lr=1e-3)
        return replace(base, **overrides)

    @classmethod
    def easyedit(cls, **overrides: Any) -> DINMHyperParams:
        """EasyEdit's DINM objective and settings: ``0.1 · NLL + KL`` with the KL under ``no_grad``."""
        return replace(cls(lr=5e-4, num_steps=10, nll_weight=0.1, kl_weight=1.0, kl_grad=False), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows(model: Model, prompt: str, response: str) -> tuple[list[int], list[int], Tensor]:
    """Token row ``prompt + response[:-1]``, the positions predicting each response token, and those tokens."""
    head, resp = pair_ids(model, prompt, response)
    row = head + resp
    return row[:-1], list(range(len(head) - 1, len(row) - 1)), torch.tensor(resp, device=model.device)


def _logits(model: Model, row: list[int]) -> Float[Tensor, "seq vocab"]:
    return model.hf(input_ids=torch.tensor([row], device=model.device)).logits[0].float()


def edit(model: Model, item: SafetyItem, layer: int | str | None = "auto",
         hparams: DINMHyperParams | None = None, on_unit: OnUnit | None = None) -> EditResult:
    """Detoxify ``model`` on ``item`` (see the module docstring); returns the weight deltas.

    Args:
        layer: ``"auto"``/``None`` — the item's own toxic layer (``hparams.layer`` if set); an int
            — that layer.
        on_unit: called as ``on_unit(step, num_steps)`` after each optimiser step (:mod:`knowscope.work`);
            when it raises, the weights are restored and nothing is returned.
    """
    if not isinstance(item, SafetyItem):
        raise ValueError(f"DINM edits a SafetyItem, got {type(item).__name__}")
    hp = hparams or DINMHyperParams.for_model(model)
    region = None
    if layer in (None, "auto"):
        if hp.layer is not None:
            chosen = model.arch.check_layer(hp.layer)
        else:

            region = locate_toxic(model, item, distance=hp.locate_distance, context=hp.locate_context)
            chosen = region.layer
    elif isinstance(layer, int) and not isinstance(layer, bool):
        chosen = model.arch.check_layer(layer)
    else:
        raise ValueError(f"layer must be 'auto', None or an int, got {layer!r}")

    t0 = time.perf_counter()
    safe_row, safe_pos, safe_tgt = _rows(model, item.adversarial_prompt, item.safe_generation)
    kc_row, kc_pos, _ = _rows(model, item.constraint_prompt, item.constraint_answer)
    with torch.no_grad():
        kc_ref = torch.log_softmax(_logits(model, kc_row)[kc_pos], dim=-1)

    history: list[dict[str, float]] = []
    with TrainableWeights(model, list(mlp_out_parameters(model, [chosen]))) as tw:
        opt = torch.optim.Adam(list(tw.params.values()), lr=hp.lr)
        for step in range(hp.num_steps):
            if on_unit is not None and step:
                on_unit(step, hp.num_steps)
            opt.zero_grad(set_to_none=True)
            logp = torch.log_softmax(_logits(model, safe_row)[safe_pos], dim=-1)
            nll = -logp.gather(1, safe_tgt[:, None]).mean()
            with torch.set_grad_enabled(hp.kl_grad):
                kc_logp = torch.log_softmax(_logits(model, kc_row)[kc_pos], dim=-1)
                kl = torch.nn.functional.kl_div(kc_logp, kc_ref, log_target=True, reduction="batchmean")
            loss = hp.nll_weight * nll + hp.kl_weight * kl
            history.append({"loss": loss.item(), "nll": nll.item(), "kl": kl.item()})
            if history[-1]["loss"] < hp.early_stop_loss:
                break
            loss.backward()
            opt.step()
            if hp.norm_constraint is not None:
                tw.clamp(hp.norm_constraint)
        if on_unit is not None:  # the last step (or an early stop): all done
            on_unit(hp.num_steps, hp.num_steps)
        deltas = tw.deltas()
    seconds = time.perf_counter() - t0
    logger.info("DINM item %s at layer %d: %d steps, loss %.4f -> %.4f, %.1f s", item.id, chosen, len(history),
                history[0]["loss"], history[-1]["loss"], seconds)
    extra: dict[str, Any] = {"loss_history": history, "item_id": item.id, "category": item.category}
    if region is not None:
        extra["toxic_profile"] = region.profile.tolist()
        extra["mlp_shift"] = region.mlp_shift.tolist()
    return EditResult(
        method="dinm",
        deltas=deltas,
        fingerprint=model.fingerprint,
        layers=[chosen],
        hparams=hp.to_dict(),
        requests=[item.to_safeedit()],
        model_name=model.name,
        seconds=seconds,
        extra=extra,
    )
