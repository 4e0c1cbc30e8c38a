"""The v*/z optimisation: the vector that, added at the subject's last token, makes the model say the new target.

:func:`optimize_delta` finds the vector added to ``hook_mlp_out`` (ROME's v*) or ``hook_resid_post``
(MEMIT's z) at the subject's last token: NLL of the target over all context templates +
``kl_factor`` × KL of the next-token distribution at the subject in ``"{subject} is a"`` + weight
decay, with the norm clamped after every Adam step and an early stop once the loss is small.
:func:`optimize_deltas` does several facts in one batched forward per step. Which forward pass runs
each step is chosen in :mod:`knowscope.editing.vpaths`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.hparams import VOptParams
from knowscope.editing.keys import pad, prompt_ids
from knowscope.editing.vpaths import selected_logits_fn
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)


@dataclass
class DeltaResult:
    """Outcome of :func:`optimize_delta`: the vector, the activation it is added to, the loss trace."""

    delta: Float[Tensor, " d_model"]
    init: Float[Tensor, " d_model"]  # activation at the subject's last token of the plain prompt
    losses: list[dict[str, float]]


def optimize_delta(
    model: Model, hook_name: str, fact: Fact, templates: Sequence[str], hp: VOptParams
) -> DeltaResult:
    """Optimise the vector added at ``hook_name`` at the subject's last token so the model says
    ``fact.target_new`` after every template, staying close to its own distribution on ``"{subject} is a"``.

    Loss (as ROME's compute_v / MEMIT's compute_z): mean over templates of the target's summed NLL
    per target token, + ``kl_factor`` × KL(P_edited ‖ P_orig) at the subject of the KL prompt,
    + ``v_weight_decay`` × ‖δ‖ / ‖ref‖². After each Adam step ‖δ‖ is clamped to
    ``clamp_norm_factor`` × ‖ref‖; the loop stops early once the loss is below ``early_stop_nll``.

    ``ref`` (``hp.norm_reference``): ``"prompt"`` — the activation at the plain prompt (the papers'
    code); ``"templates"`` — its mean over all templates. The two differ most when the subject is
    the first token after BOS: on SmolLM2 that position carries a massive residual (norm ~750 vs
    ~80) and a tiny MLP output, so a clamp relative to it leaves ROME no room to edit.
    """
    return optimize_deltas(model, hook_name, [fact], templates, hp)[0]


def optimize_deltas(
    model: Model, hook_name: str, facts: Sequence[Fact], templates: Sequence[str], hp: VOptParams
) -> list[DeltaResult]:
    """:func:`optimize_delta` for several facts at once, in one batched forward pass per step.

    Each fact has its own vector, its own rows (its templates and its KL prompt), its own loss and
    its own early stop; the joint loss is the sum of the facts' losses, so each vector's gradient
    is its own fact's. Adam is elementwise and a fact that has stopped is held at its value (its
    update is undone), so every vector follows exactly the trajectory it would alone — only the
    shapes of the matrix products change (tests/unit/test_vpaths.py).
    """
    if hp.norm_reference not in ("prompt", "templates"):
        raise ValueError(f"norm_reference must be 'prompt' or 'templates', got {hp.norm_reference!r}")
    facts = list(facts)
    dev = model.device
    n_rw = len(templates)
    rows: list[list[int]] = []
    look: list[int] = []
    sel_rows: list[int] = []
    sel_pos: list[int] = []
    targets: list[list[int]] = []
    for fact in facts:
        target = model.encode_target(fact.new_continuation)
        targets.append(target)
        first = len(rows)
        for r, t in enumerate(templates):
            ids, i = prompt_ids(model, t.format(fact.prompt), fact.subject)
            start = len(ids) - 1
            rows.append(ids + target[:-1])
            look.append(i)
            sel_rows.extend([first + r] * len(target))
            sel_pos.extend(range(start, start + len(target)))
        kl_ids, kl_i = prompt_ids(model, hp.kl_prompt, fact.subject)
        rows.append(kl_ids)
        look.append(kl_i)
        sel_rows.append(first + n_rw)
        sel_pos.append(kl_i)
    tokens = pad(model, rows)
    per_fact = n_rw + 1
    owner = torch.arange(len(facts), device=dev).repeat_interleave(per_fact)  # fact of each row
    look_t = torch.tensor(look, device=dev)
    # where each fact's selected logits start: n_rw * len(target) target positions, then 1 KL position
    offsets = [0]
    for target in targets:
        offsets.append(offsets[-1] + n_rw * len(target) + 1)

    delta = torch.zeros(len(facts), model.arch.d_model, device=dev, dtype=torch.float32, requires_grad=True)
    state: dict[str, Tensor] = {}

    def note_init(at_look: Tensor) -> None:
        """The hook's activation at each row's subject position, unedited: ``init`` and the norm reference."""
        at_subject = at_look.detach().float().reshape(len(facts), per_fact, -1)
        state["init"] = at_subject[:, 0].clone()  # the plain prompt "{}" is the first template
        ref = at_subject[:, :n_rw].mean(1) if hp.norm_reference == "templates" else state["init"]
        state["ref_norm"] = ref.norm(dim=-1)

    forward = selected_logits_fn(model, hook_name, tokens, look_t, torch.tensor(sel_rows, device=dev),
                                  torch.tensor(sel_pos, device=dev), note_init)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_init: list[Tensor | None] = [None] * len(facts)
    losses: list[list[dict[str, float]]] = [[] for _ in facts]
    active = [True] * len(facts)
    for it in range(hp.v_steps):
        opt.zero_grad()
        logits = forward(delta[owner])  # [selected positions of every fact, vocab]
        total = logits.new_zeros(())
        stepping = []
        for j, target in enumerate(targets):
            if not active[j]:
                continue
            block = logits[offsets[j]:offsets[j + 1]]
            kl_logp = torch.log_softmax(block[-1], dim=-1)
            if kl_init[j] is None:
                kl_init[j] = kl_logp.detach().clone()
            logp = torch.log_softmax(block[:-1], dim=-1).reshape(n_rw, len(target), -1)
            tgt = torch.tensor(target, device=dev).expand(n_rw, -1)
            picked = logp.gather(-1, tgt[..., None])[..., 0]
            nll = -(picked.sum(1) / len(target)).mean()
            kl = hp.kl_factor * torch.nn.functional.kl_div(kl_init[j][None], kl_logp[None], log_target=True,
                                                           reduction="batchmean")
            wd = hp.v_weight_decay * (delta[j].norm() / state["ref_norm"][j] ** 2)
            loss = nll + kl + wd
            losses[j].append({"loss": loss.item(), "nll": nll.item(), "kl": kl.item(), "wd": wd.item(),
                              "p_target": float(torch.exp(-nll.detach()))})
            if float(loss.detach()) < hp.early_stop_nll or it == hp.v_steps - 1:
                active[j] = False
                continue
            total = total + loss
            stepping.append(j)
        if not stepping:
            break
        held = [j for j in range(len(facts)) if j not in stepping]
        kept = delta.detach()[held].clone()
        total.backward()
        opt.step()
        with torch.no_grad():
            if held:
                delta[held] = kept  # a stopped fact keeps its vector (as if it had left the loop)
            max_norm = hp.clamp_norm_factor * state["ref_norm"]
            norms = delta.norm(dim=-1)
            over = norms > max_norm
            delta[over] *= (max_norm[over] / norms[over])[:, None]
    out = []
    for j, fact in enumerate(facts):
        logger.debug("delta for %r: %d steps, %s", fact.subject, len(losses[j]), losses[j][-1])
        out.append(DeltaResult(delta=delta[j].detach().clone(), init=state["init"][j], losses=losses[j]))
    return out
