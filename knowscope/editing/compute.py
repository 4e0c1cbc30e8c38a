"""Shared pieces of ROME and MEMIT: context prefixes, keys k*, and the v*/z optimisation.

* :func:`context_templates` — ``"{}"`` plus short random prefixes sampled by the model from its BOS
  (ROME's trick for a key that holds in any context), seeded and cached on disk.
* :func:`compute_keys` — the MLP key at the subject's last token, averaged over those templates.
* :func:`optimize_delta` — the vector added at the subject's last token (to ``hook_mlp_out`` for ROME,
  to ``hook_resid_post`` for MEMIT's z) that makes the model say ``target_new``: NLL of the target
  over all templates + ``kl_factor`` × KL of the next-token distribution at the subject in
  ``"{subject} is a"`` + weight decay, with the norm clamped after every Adam step and an early
  stop once the loss is small.

Prompts are tokenized with knowscope's convention (BOS first) by concatenating token ids, so the
target tokens and the subject position are exact and independent of tokenizer merges at the seams.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.hparams import VOptParams
from knowscope.editing.session import unedited_weights
from knowscope.editing.stats import _bos_id, hash_seed
from knowscope.facts import Fact
from knowscope.models import Model, cache_dir
from knowscope.models.blocks import block_input, final_logits, run_block, run_blocks, supports_block_runs

logger = logging.getLogger(__name__)

_TEMPLATE_MEMORY: dict[tuple[str, tuple[tuple[int, int], ...], int], list[str]] = {}


# ------------------------------------------------------------------------------------------------
# context templates


def context_templates(model: Model, lengths: Sequence[Sequence[int]] = ((10, 5),), seed: int = 0) -> list[str]:
    """``["{}"]`` plus ``n`` prefixes of ``length`` tokens sampled from BOS for each ``(length, n)``.

    Sampling is top-5 (as ROME's prefixes), seeded; the list is cached in memory and on disk by
    model fingerprint, lengths and seed. Braces in generated text are replaced by spaces so the
    templates stay valid format strings.
    """
    key = (model.fingerprint, tuple((int(a), int(b)) for a, b in lengths), int(seed))
    if key in _TEMPLATE_MEMORY:
        return list(_TEMPLATE_MEMORY[key])
    tag = "-".join(f"{a}x{b}" for a, b in key[1]) or "none"
    path = cache_dir() / "editing" / model.fingerprint / f"templates-{tag}-s{seed}.json"
    if path.is_file():
        templates = json.loads(path.read_text())
    else:
        templates = ["{}"]
        bos = _bos_id(model)
        for length, n in key[1]:
            if length < 1 or n < 1:
                raise ValueError(f"context length and count must be >= 1, got ({length}, {n})")
            start = torch.full((n, 1), bos, dtype=torch.long, device=model.device)
            with torch.no_grad(), unedited_weights(model), \
                    torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
                torch.manual_seed(hash_seed("templates", seed, length, n))
                out = model.generate(
                    start, do_sample=True, top_k=5,
                    max_new_tokens=length, min_new_tokens=length,
                )
            for row in out[:, 1:]:
                text = model.tokenizer.decode(row, skip_special_tokens=True)
                text = text.replace("{", " ").replace("}", " ")
                templates.append(text + ". {}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(templates))
        os.replace(tmp, path)
    _TEMPLATE_MEMORY[key] = list(templates)
    return list(templates)


# ------------------------------------------------------------------------------------------------
# tokenization helpers


def encode(model: Model, text: str) -> list[int]:
    return list(model.tokenizer.encode(text, add_special_tokens=False))


def prompt_ids(model: Model, template: str, subject: str) -> tuple[list[int], int]:
    """Token ids (BOS first) of ``template.format(subject)`` and the index of the subject's last token.

    The text up to the end of the subject and the rest are tokenized separately and concatenated,
    so the subject's last token is found exactly even where merges would cross the seam.
    """
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the subject")
    if not subject or not subject.strip():
        raise ValueError(f"subject {subject!r} is empty")
    head, tail = template.split("{}")
    left = encode(model, head + subject)
    if not left:
        raise ValueError(f"subject {subject!r} tokenizes to nothing")
    ids = [_bos_id(model)] + left + (encode(model, tail) if tail else [])
    return ids, len(left)  # index len(left) is the subject's last token (BOS at 0)


def pad(model: Model, rows: Sequence[Sequence[int]]) -> Tensor:
    """Right-pad token rows into one tensor (causal attention: padding never affects real positions)."""
    width = max(len(r) for r in rows)
    fill = _bos_id(model)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(model.device)


def check_request(model: Model, fact: Fact) -> None:
    if not isinstance(fact, Fact):
        raise ValueError(f"edit requests must be knowscope.facts.Fact records, got {type(fact).__name__}")
    model.encode_target(fact.new_continuation)


# ------------------------------------------------------------------------------------------------
# keys and values


def template_group_weights(lengths: Sequence[Sequence[int]]) -> Float[Tensor, " n_templates"]:
    """Weights of :func:`context_templates`' templates when each group counts equally (MEMIT).

    The templates form groups: the plain ``"{}"``, then ``n`` prefixes per ``(length, n)`` entry.
    MEMIT's ``compute_ks`` averages the keys within each group and then over the groups, so with
    the default ``((10, 5),)`` the plain prompt weighs 1/2 and each prefixed one 1/10.
    """
    sizes = [1] + [int(n) for _, n in lengths]
    return torch.cat([torch.full((size,), 1.0 / (len(sizes) * size), dtype=torch.float64) for size in sizes])


@torch.no_grad()
def compute_keys(
    model: Model, layer: int, requests: Sequence[Fact], templates: Sequence[str],
    weights: Float[Tensor, " n_templates"] | None = None,
) -> Float[Tensor, "n_requests d_mlp"]:
    """MLP key (input of the output projection) at each subject's last token, averaged over templates.

    ``weights=None`` averages uniformly over the templates (ROME's ``compute_u``); MEMIT passes
    :func:`template_group_weights` (its ``compute_ks``).
    """
    keys = template_keys(model, layer, requests, templates)
    if weights is None:
        return keys.mean(1)
    if weights.shape != (len(templates),):
        raise ValueError(f"{weights.shape[0]} template weights for {len(templates)} templates")
    w = (weights / weights.sum()).to(device=keys.device, dtype=torch.float64)
    return torch.einsum("rtd,t->rd", keys.double(), w).to(keys.dtype)


@torch.no_grad()
def template_keys(
    model: Model, layer: int, requests: Sequence[Fact], templates: Sequence[str]
) -> Float[Tensor, "n_requests n_templates d_mlp"]:
    """MLP key at each subject's last token in each template (not averaged)."""
    rows: list[list[int]] = []
    idx: list[int] = []
    for fact in requests:
        for t in templates:
            ids, i = prompt_ids(model, t.format(fact.prompt), fact.subject)
            rows.append(ids)
            idx.append(i)
    keys = capture(model, model.arch.hook_mlp_key(layer), rows, idx)
    return keys.reshape(len(requests), len(templates), -1)


@torch.no_grad()
def capture(model: Model, hook_name: str, rows: Sequence[Sequence[int]], idx: Sequence[int],
            batch_size: int = 64) -> Float[Tensor, "n d"]:
    """Activation at ``hook_name`` at position ``idx[i]`` of token row ``i`` (batched forwards)."""
    out: list[Tensor] = []
    layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else model.arch.n_layers - 1
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pos = torch.tensor(idx[start : start + batch_size], device=model.device)
        got: dict[str, Tensor] = {}

        def hook(act: Tensor, hook: Any, got: dict[str, Tensor] = got, pos: Tensor = pos) -> Tensor:
            got["a"] = act[torch.arange(act.shape[0], device=act.device), pos].detach().float()
            return act

        stop = layer + 1 if layer + 1 < model.arch.n_layers else None
        model.bridge.run_with_hooks(pad(model, chunk), fwd_hooks=[(hook_name, hook)], return_type=None,
                                    stop_at_layer=stop)
        out.append(got["a"])
    return torch.cat(out)


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
    shapes of the matrix products change (tests/unit/test_compute.py).
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
    row_t = torch.arange(len(rows), device=dev)
    look_t = torch.tensor(look, device=dev)
    # where each fact's selected logits start: n_rw * len(target) target positions, then 1 KL position
    offsets = [0]
    for target in targets:
        offsets.append(offsets[-1] + n_rw * len(target) + 1)

    delta = torch.zeros(len(facts), model.arch.d_model, device=dev, dtype=torch.float32, requires_grad=True)
    state: dict[str, Tensor] = {}

    def add_delta(act: Tensor, hook: Any = None) -> Tensor:
        if "init" not in state:
            at_subject = act[row_t, look_t].detach().float().reshape(len(facts), per_fact, -1)
            state["init"] = at_subject[:, 0].clone()  # the plain prompt "{}" is the first template
            ref = at_subject[:, :n_rw].mean(1) if hp.norm_reference == "templates" else state["init"]
            state["ref_norm"] = ref.norm(dim=-1)
        mask = torch.zeros(act.shape[0], act.shape[1], 1, device=act.device, dtype=act.dtype)
        mask[row_t, look_t] = 1.0
        return act + mask * delta[owner].to(act.dtype)[:, None, :]

    forward = _selected_logits_fn(model, hook_name, tokens, torch.tensor(sel_rows, device=dev),
                                  torch.tensor(sel_pos, device=dev), add_delta)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_init: list[Tensor | None] = [None] * len(facts)
    losses: list[list[dict[str, float]]] = [[] for _ in facts]
    active = [True] * len(facts)
    for it in range(hp.v_steps):
        opt.zero_grad()
        logits = forward()  # [selected positions of every fact, vocab]
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


# ------------------------------------------------------------------------------------------------
# the forward pass of the v*/z optimisation

#: which forward pass :func:`optimize_delta` runs: ``"fast"`` (blocks from the edited layer up on a
#: residual recorded once, logits only where the loss reads them) or ``"bridge"`` (the bridge's full
#: forward pass with a hook, every position's logits). Both give the same deltas (tests/unit/test_compute.py).
VPath = Literal["fast", "bridge"]
_V_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("knowscope_v_path", default="fast")


@contextlib.contextmanager
def v_path(path: VPath) -> Iterator[None]:
    """Run every v*/z optimisation inside the block with ``path`` (for comparisons and benchmarks)."""
    if path not in ("fast", "bridge"):
        raise ValueError(f"v path must be 'fast' or 'bridge', got {path!r}")
    token = _V_PATH.set(path)
    try:
        yield
    finally:
        _V_PATH.reset(token)


def _hook_layer(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def _selected_logits_fn(model: Model, hook_name: str, tokens: Tensor, sel_rows: Tensor, sel_pos: Tensor,
                        add_delta: Callable[..., Tensor]) -> Callable[[], Tensor]:
    """A function computing the logits at ``(sel_rows, sel_pos)`` with ``add_delta`` at ``hook_name``.

    The fast path records the edited block's input once, then each call runs the blocks from the
    edited layer up (the layers below see the same activations at every step) and the final norm and
    unembedding only at the selected positions. It is used when the blocks can run alone and, checked
    once per model, it reproduces the bridge's logits; otherwise (or under ``v_path("bridge")``)
    the bridge's own forward pass runs.
    """
    layer = _hook_layer(hook_name)

    def bridge() -> Tensor:
        return model.bridge.run_with_hooks(tokens, fwd_hooks=[(hook_name, add_delta)])[sel_rows, sel_pos].float()

    if _V_PATH.get() == "bridge" or layer is None or not supports_block_runs(model) \
            or model.compat.edit_mode == "bridge":
        return bridge
    h_in = block_input(model, layer, tokens)
    point = model.bridge.hook_dict[hook_name]

    def fast() -> Tensor:
        fired: list[bool] = []

        def hook(module: Any, inputs: Any, out: Tensor) -> Tensor:
            fired.append(True)
            return add_delta(out)

        handle = point.register_forward_hook(hook)
        try:
            h = run_block(model, layer, h_in)
        finally:
            handle.remove()
        if not fired:
            raise RuntimeError(f"{hook_name} did not fire when block {layer} ran alone")
        h = run_blocks(model, layer + 1, h)
        return final_logits(model, h[sel_rows, sel_pos]).float()

    if model.compat.edit_mode is None:  # once per model: the fast path must reproduce the bridge
        with torch.no_grad():
            want, got = bridge(), fast()
        err = float((want - got).abs().max())
        ok = err <= 1e-4 * (float(want.abs().max()) + 1e-6)
        model.compat.edit_mode = "fast" if ok else "bridge"
        if not ok:
            logger.warning("the editors' fast forward pass differs from the bridge's (max |dlogit| %.3g); "
                           "v*/z optimisation uses the bridge's forward pass", err)
            return bridge
    return fast


def facts_meta(requests: Sequence[Fact]) -> list[dict[str, Any]]:
    return [{"case_id": f.case_id, "subject": f.subject, "prompt": f.prompt, "target_true": f.target_true,
             "target_new": f.target_new} for f in requests]


class WeightGuard:
    """Bit-exact copies of weights that an editor changes while it computes; restored on exit."""

    def __init__(self, model: Model, names: Sequence[str]) -> None:
        self.model = model
        self.names = list(names)
        self.saved: dict[str, Tensor] = {}

    def __enter__(self) -> WeightGuard:
        params = self.model.named_parameters()
        self.saved = {n: params[n].detach().clone() for n in self.names}
        return self

    def __exit__(self, *exc: Any) -> None:
        params = self.model.named_parameters()
        with torch.no_grad():
            for n, v in self.saved.items():
                params[n].copy_(v)


def mlp_out_parameters(model: Model, layers: Sequence[int]) -> dict[str, torch.nn.Parameter]:
    """The MLP output projection of each layer by clean HF name, with its bias where there is one."""
    params = model.named_parameters()
    out = {}
    for layer in layers:
        name = model.arch.mlp_out_name(layer)
        out[name] = params[name]
        bias = name.rsplit(".", 1)[0] + ".bias"
        if bias in params:
            out[bias] = params[bias]
    return out


class TrainableWeights(WeightGuard):
    """:class:`WeightGuard` for editors that train weights by gradient (FT, DINM).

    Inside the block the named parameters require grad; :meth:`clamp` keeps each within an L-inf
    ball around its saved value and :meth:`deltas` reads the change. On exit the values are
    restored bit for bit, the ``requires_grad`` flags put back and the gradients dropped.
    """

    def __enter__(self) -> TrainableWeights:
        super().__enter__()
        self.params = {n: self.model.named_parameters()[n] for n in self.names}
        self.flags = {n: p.requires_grad for n, p in self.params.items()}
        for p in self.params.values():
            p.requires_grad_(True)
        return self

    @torch.no_grad()
    def clamp(self, eps: float) -> None:
        for n, p in self.params.items():
            p.copy_(torch.clamp(p, self.saved[n] - eps, self.saved[n] + eps))

    @torch.no_grad()
    def deltas(self) -> dict[str, Tensor]:
        return {n: (p.detach() - self.saved[n]).clone().cpu() for n, p in self.params.items()}

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for n, p in self.params.items():
            p.requires_grad_(self.flags[n])
            p.grad = None
