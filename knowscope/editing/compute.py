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
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.compat import EDIT_PATHS
from knowscope.editing.hparams import VOptParams
from knowscope.editing.session import unedited_weights
from knowscope.editing.stats import _bos_id, hash_seed
from knowscope.facts import Fact
from knowscope.models import Model, cache_dir
from knowscope.models.blocks import (
    PrefixKV,
    additive_mask,
    block_input,
    final_logits,
    run_block,
    run_blocks,
    supports_block_runs,
)
from knowscope.models.plain import PlainBlocks, PlainNotNow, PlainUnavailable

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

    forward = _selected_logits_fn(model, hook_name, tokens, look_t, torch.tensor(sel_rows, device=dev),
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


# ------------------------------------------------------------------------------------------------
# the forward pass of the v*/z optimisation

#: which forward pass :func:`optimize_delta` runs:
#:
#: * ``"plain"`` (default) — ``"packed"`` with the blocks, final norm and unembedding run as plain tensor
#:   code from the weights (:mod:`knowscope.models.plain`; Llama-family models only), no bridge calls;
#: * ``"packed"`` — the residual after the edited layer is recorded once, with every later
#:   layer's keys/values; each step runs the blocks above the edited layer once per block on every
#:   row's positions from its subject's last token on (earlier positions cannot see the delta under
#:   causal attention), the rows left-aligned, each at its own positions, with the earlier positions'
#:   keys/values as a cache that an explicit mask cuts at each row's start; the final norm and
#:   unembedding only where the loss reads logits;
#: * ``"suffix"`` — the same, the rows grouped by start position instead of masked (one block call per
#:   group, for attention that ignores explicit masks with a cache);
#: * ``"fast"`` — the blocks from the edited layer up on all positions, on the edited block's input
#:   recorded once, logits only where the loss reads them;
#: * ``"bridge"`` — the bridge's full forward pass with a hook, every position's logits.
#:
#: All five give the same deltas (tests/unit/test_compute.py). The first four are used only where,
#: checked once per model and hook (kind and layer), they reproduce the bridge's logits with a non-zero
#: delta; otherwise the next one down runs.
VPath = Literal["plain", "packed", "suffix", "fast", "bridge"]
V_PATHS = EDIT_PATHS
_V_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("knowscope_v_path", default="plain")


@contextlib.contextmanager
def v_path(path: VPath) -> Iterator[None]:
    """Run every v*/z optimisation inside the block with at most ``path`` (for comparisons and benchmarks)."""
    if path not in V_PATHS:
        raise ValueError(f"v path must be one of {', '.join(map(repr, V_PATHS))}, got {path!r}")
    token = _V_PATH.set(path)
    try:
        yield
    finally:
        _V_PATH.reset(token)


def _hook_layer(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


Forward = Callable[[Tensor], Tensor]  # row deltas [rows, d_model] -> logits at the selected positions


def _selected_logits_fn(model: Model, hook_name: str, tokens: Tensor, look: Tensor, sel_rows: Tensor,
                        sel_pos: Tensor, note_init: Callable[[Tensor], None]) -> Forward:
    """A function of the row deltas computing the logits at ``(sel_rows, sel_pos)``, each row's delta
    added at ``hook_name`` at its position ``look``; ``note_init`` receives the unedited activations
    there (once, before the first call returns). The path is chosen as :data:`VPath` describes."""
    layer = _hook_layer(hook_name)
    rows_t = torch.arange(tokens.shape[0], device=tokens.device)
    recorded: list[bool] = []

    def add(row_delta: Tensor) -> Callable[..., Tensor]:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            if not recorded:
                note_init(act[rows_t, look])
                recorded.append(True)
            mask = torch.zeros(act.shape[0], act.shape[1], 1, device=act.device, dtype=act.dtype)
            mask[rows_t, look] = 1.0
            return act + mask * row_delta.to(act.dtype)[:, None, :]
        return hook

    def bridge(row_delta: Tensor) -> Tensor:
        out = model.bridge.run_with_hooks(tokens, fwd_hooks=[(hook_name, add(row_delta))])
        return out[sel_rows, sel_pos].float()

    wanted = _V_PATH.get()
    if wanted == "bridge" or layer is None or not supports_block_runs(model):
        return bridge
    kind = hook_name.split(".", 2)[2]
    checks = model.compat.edit_checks  # per hook name: a check at layer L covers only the blocks above L
    builders = {"plain": functools.partial(_packed_forward, plain=True), "packed": _packed_forward,
                "suffix": _suffix_forward, "fast": _fast_forward}
    for path in V_PATHS[V_PATHS.index(wanted):-1]:
        if checks.get((hook_name, path)) is False:
            continue
        try:
            fn = builders[path](model, layer, hook_name, tokens, look, sel_rows, sel_pos, add)
        except _NotForThisCall as exc:
            logger.debug("v*/z path %r skipped for this call: %s", path, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any failure to build a path means: use the next slower one
            logger.info("v*/z path %r is not available at %s: %s", path, hook_name, exc)
            checks[(hook_name, path)] = False
            continue
        # the packed path's per-row prefix mask is only exercised by rows with different subject positions
        conclusive = path not in ("plain", "packed") or int(look.unique().numel()) > 1
        if (hook_name, path) in checks or _reproduces_bridge(model, hook_name, path, fn, bridge, tokens.shape[0],
                                                             record=conclusive):
            init = getattr(fn, "init_at_look", None)
            if init is not None and not recorded:  # only from a path that reproduces the bridge
                note_init(init)
                recorded.append(True)
            return fn
    model.compat.edit_modes.setdefault(kind, "bridge")
    return bridge


class _PathUnavailable(RuntimeError):
    """A v*/z forward path cannot run on this model (no KV cache keyword, a hook that does not fire...)."""


class _NotForThisCall(RuntimeError):
    """A v*/z forward path does not fit this call's rows (not a property of the model: nothing cached)."""


def _reproduces_bridge(model: Model, hook_name: str, path: str, fn: Forward, bridge: Forward, n_rows: int,
                       record: bool = True) -> bool:
    """Once per model and hook: ``fn`` must give the bridge's logits with a non-zero delta (the bridge
    runs first, so the unedited activation it records is the one the optimisation starts from). A pass
    is recorded only when ``record`` (the call's rows exercise the whole path), a failure always."""
    kind = hook_name.split(".", 2)[2]
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(n_rows, model.arch.d_model, generator=gen).to(model.device) * 0.5
    try:
        with torch.no_grad():
            want, got = bridge(probe), fn(probe)
        err = float((want - got).abs().max())
        ok = err <= 1e-4 * (float(want.abs().max()) + 1e-6)
    except Exception as exc:  # noqa: BLE001 - a path that fails its check is not used
        err, ok = float("nan"), False
        logger.info("v*/z path %r failed its check at %s: %s", path, hook_name, exc)
    if ok and not record:
        return True  # used for this call, checked again on the next
    model.compat.edit_checks[(hook_name, path)] = ok
    if ok:
        best = model.compat.edit_modes.get(kind)
        if best is None or V_PATHS.index(path) < V_PATHS.index(best):
            model.compat.edit_modes[kind] = path
    else:
        logger.warning("the editors' %r forward pass differs from the bridge's at %s (max |dlogit| %.3g); "
                       "trying the next slower one", path, hook_name, err)
    return ok


def _fast_forward(model: Model, layer: int, hook_name: str, tokens: Tensor, look: Tensor, sel_rows: Tensor,
                  sel_pos: Tensor, add: Callable[[Tensor], Callable[..., Tensor]]) -> Forward:
    """Blocks from the edited layer up on every position, from the edited block's input recorded once."""
    h_in = block_input(model, layer, tokens)
    point = model.bridge.hook_dict[hook_name]

    def fast(row_delta: Tensor) -> Tensor:
        fired: list[bool] = []
        inner = add(row_delta)

        def hook(module: Any, inputs: Any, out: Tensor) -> Tensor:
            fired.append(True)
            return inner(out)

        handle = point.register_forward_hook(hook)
        try:
            h = run_block(model, layer, h_in)
        finally:
            handle.remove()
        if not fired:
            raise _PathUnavailable(f"{hook_name} did not fire when block {layer} ran alone")
        h = run_blocks(model, layer + 1, h)
        return final_logits(model, h[sel_rows, sel_pos]).float()

    return fast


@dataclass
class _AboveRecord:
    """What the suffix paths record once: the unedited residual after the edited block, every later
    block's keys/values on all positions, and the hook's activation at each row's subject position."""

    base: Tensor  # [rows, pos, d_model]
    kv: dict[int, tuple[Tensor, Tensor]]  # block -> keys, values [rows, kv heads, pos, head dim]
    init_at_look: Tensor  # [rows, d_model]
    ends: Tensor  # [rows]: one past the last position each row's loss reads (at least its subject)


def _record_above(model: Model, layer: int, hook_name: str, tokens: Tensor, look: Tensor, sel_rows: Tensor,
                  sel_pos: Tensor) -> _AboveRecord:
    kind = hook_name.split(".", 2)[2]
    if kind not in ("hook_resid_post", "hook_mlp_out"):
        raise _PathUnavailable(f"the delta at {kind} does not add to the residual stream")
    if model.compat.cache_keyword is None:
        raise _PathUnavailable("the decoder layers take no KV cache")
    if bool((sel_pos < look[sel_rows]).any()):
        raise _NotForThisCall("the loss reads a position before the delta")
    n = model.arch.n_layers
    rows_t = torch.arange(tokens.shape[0], device=tokens.device)
    with torch.no_grad():
        h_in = block_input(model, layer, tokens)
        point = model.bridge.hook_dict[hook_name]
        grab: dict[str, Tensor] = {}

        def capture_hook(module: Any, inputs: Any, out: Tensor) -> None:
            grab["a"] = out[rows_t, look].detach()

        handle = point.register_forward_hook(capture_hook)
        try:
            base = run_block(model, layer, h_in)  # the residual after the edited block, unedited
        finally:
            handle.remove()
        if "a" not in grab:
            raise _PathUnavailable(f"{hook_name} did not fire when block {layer} ran alone")
        kv: dict[int, tuple[Tensor, Tensor]] = {}
        h = base
        for upper in range(layer + 1, n):
            h = run_block(model, upper, h, 0, PrefixKV(record=kv))
        if len(kv) != n - layer - 1:
            raise _PathUnavailable("the attention did not write its keys/values to the cache it was given")
    ends = (look + 1).clone()
    ends.scatter_reduce_(0, sel_rows, sel_pos + 1, reduce="amax")
    return _AboveRecord(base, {layer + 1 + i: kv[k] for i, k in enumerate(sorted(kv))}, grab["a"], ends)


def _packed_forward(model: Model, layer: int, hook_name: str, tokens: Tensor, look: Tensor, sel_rows: Tensor,
                    sel_pos: Tensor, add: Callable[[Tensor], Callable[..., Tensor]], plain: bool = False) -> Forward:
    """Blocks above the edited layer, one call each, on every row's positions from its subject on (see
    :data:`VPath`): row ``r`` runs positions ``look[r] .. ends[r] - 1`` left-aligned at their own
    position ids; its keys/values before ``look[r]`` come from the record, cut per row by the mask.
    ``plain``: the blocks run as :class:`~knowscope.models.plain.PlainBlocks` instead of the bridge's."""
    blocks = None
    if plain:  # before the record, so a model plain code cannot run costs no recording pass
        try:
            blocks = PlainBlocks(model, layer + 1)
        except PlainNotNow as exc:
            raise _NotForThisCall(str(exc)) from exc
        except PlainUnavailable as exc:
            raise _PathUnavailable(str(exc)) from exc
    rec = _record_above(model, layer, hook_name, tokens, look, sel_rows, sel_pos)
    dev = tokens.device
    n_rows = tokens.shape[0]
    width = int((rec.ends - look).max())
    prefix = int(look.max())
    i = torch.arange(width, device=dev)
    positions = look[:, None] + i[None, :]  # [rows, width]; past a row's end: unread padding
    h0 = rec.base[torch.arange(n_rows, device=dev)[:, None], positions.clamp(max=rec.base.shape[1] - 1)]
    cache = {up: (k[:, :, :prefix], v[:, :, :prefix]) for up, (k, v) in rec.kv.items()}
    j = torch.arange(prefix, device=dev)
    see_prefix = (j[None, :] < look[:, None])[:, None, :].expand(n_rows, width, prefix)  # [rows, query, key]
    see_suffix = (i[None, :] <= i[:, None])[None].expand(n_rows, width, width)
    mask = additive_mask(torch.cat([see_prefix, see_suffix], dim=-1), rec.base.dtype)  # [rows, 1, query, key]
    offset = torch.zeros(n_rows, width, 1, dtype=rec.base.dtype, device=dev)
    offset[:, 0] = 1.0  # the delta enters at each row's subject position, its first
    pick_pos = sel_pos - look[sel_rows]
    # absolute position embeddings are already in the recorded residual; rotary ones are applied per block
    rotary_positions = positions if model.arch.positional == "rotary" else None

    if blocks is not None:
        try:
            rotary = blocks.rotary(h0, positions)
        except PlainUnavailable as exc:
            raise _PathUnavailable(str(exc)) from exc

        def block(upper: int, h: Tensor) -> Tensor:
            return blocks.run(upper, h, rotary, mask, cache[upper])

        logits: Callable[[Tensor], Tensor] = blocks.logits
    else:
        def block(upper: int, h: Tensor) -> Tensor:
            k, v = cache[upper]
            return run_block(model, upper, h, cache=PrefixKV(k, v), position_ids=rotary_positions, attention_mask=mask)

        def logits(h: Tensor) -> Tensor:
            return final_logits(model, h)

    def packed(row_delta: Tensor) -> Tensor:
        h = h0 + offset * row_delta.to(h0.dtype)[:, None, :]
        for upper in range(layer + 1, model.arch.n_layers):
            h = block(upper, h)
        return logits(h[sel_rows, pick_pos]).float()

    packed.init_at_look = rec.init_at_look  # type: ignore[attr-defined]
    return packed


def _suffix_forward(model: Model, layer: int, hook_name: str, tokens: Tensor, look: Tensor, sel_rows: Tensor,
                    sel_pos: Tensor, add: Callable[[Tensor], Callable[..., Tensor]]) -> Forward:
    """Blocks above the edited layer on each row's positions from its subject token on (see :data:`VPath`).

    The delta enters the residual stream after block ``layer`` at the subject position: added to
    ``hook_resid_post`` directly, or through ``hook_mlp_out``, which the block adds to its residual
    output last (checked against the bridge before use). Rows are grouped by start position
    (:func:`_start_groups`), so each group shares one cached prefix length. The returned function
    carries ``init_at_look``, the unedited activation at the hook at each row's subject position.
    """
    rec = _record_above(model, layer, hook_name, tokens, look, sel_rows, sel_pos)
    base, kv_by_block, ends = rec.base, rec.kv, rec.ends
    n = model.arch.n_layers
    # a row runs from its subject position to the last position the loss reads (causal: nothing later
    # matters); rows are grouped by a shared start s <= their subject positions (one cached prefix
    # length per group), the groups chosen by :func:`_start_groups`
    dev = tokens.device
    groups = []
    order: list[int] = []
    sel_r, sel_p = sel_rows.tolist(), sel_pos.tolist()
    for start, rows_list in _start_groups(look.tolist(), ends.tolist()):
        rows = torch.tensor(rows_list, device=dev)
        width = int(ends[rows].max()) - start
        cache = {up: (k[rows, :, :start].contiguous(), v[rows, :, :start].contiguous())
                 for up, (k, v) in kv_by_block.items()}
        offset = torch.zeros(len(rows_list), width, 1, dtype=base.dtype, device=dev)  # 1 at each row's subject
        offset[torch.arange(len(rows_list), device=dev), look[rows] - start] = 1.0
        local = {r: i for i, r in enumerate(rows_list)}
        picks = [(j, local[r], p - start) for j, (r, p) in enumerate(zip(sel_r, sel_p, strict=True)) if r in local]
        order.extend(j for j, _, _ in picks)
        groups.append((start, rows, cache, offset, torch.tensor([g for _, g, _ in picks], dtype=torch.long, device=dev),
                       torch.tensor([q for _, _, q in picks], dtype=torch.long, device=dev),
                       base[rows, start:start + width]))
    inverse = torch.empty(len(order), dtype=torch.long, device=dev)
    inverse[torch.tensor(order, dtype=torch.long, device=dev)] = torch.arange(len(order), device=dev)

    def suffix(row_delta: Tensor) -> Tensor:
        picked = []
        for start, rows, cache, offset, g_rows, g_pos, h0 in groups:
            h = h0 + offset * row_delta[rows].to(h0.dtype)[:, None, :]
            for upper in range(layer + 1, n):
                k, v = cache[upper]
                h = run_block(model, upper, h, start, PrefixKV(k, v))
            picked.append(h[g_rows, g_pos])
        return final_logits(model, torch.cat(picked)[inverse]).float()

    suffix.init_at_look = rec.init_at_look  # type: ignore[attr-defined]
    return suffix


#: a group's fixed cost (a block call per layer, forward and backward) in token positions; a group is
#: merged with the next-later starts while that costs fewer recomputed positions than this
GROUP_COST_POSITIONS = 8


def _start_groups(starts: Sequence[int], ends: Sequence[int],
                  group_cost: int = GROUP_COST_POSITIONS) -> list[tuple[int, list[int]]]:
    """Rows grouped by a shared start position: ``[(start, rows)]`` with ``start <= starts[row]``.

    A group runs all its rows from ``start`` to its latest end (right-padded), so it costs
    ``len(rows) × (max end − start)`` positions plus ``group_cost``. Groups are runs of consecutive
    distinct starts (the earliest is the group's start) chosen by dynamic programming to minimise the
    total: one group per distinct start when calls are free, a single group from the earliest start
    when positions are.
    """
    by_start: dict[int, list[int]] = {}
    for r, t in enumerate(starts):
        by_start.setdefault(int(t), []).append(r)
    ts = sorted(by_start)
    m = len(ts)

    def cost(i: int, j: int) -> int:  # distinct starts ts[i..j] run from ts[i]
        rows = [r for t in ts[i:j + 1] for r in by_start[t]]
        return group_cost + len(rows) * (max(int(ends[r]) for r in rows) - ts[i])

    best = [0] + [0] * m  # best[j]: cheapest grouping of ts[:j]
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        best[j], cut[j] = min((best[i] + cost(i, j - 1), i) for i in range(j))
    out = []
    j = m
    while j:
        i = cut[j]
        out.append((ts[i], [r for t in ts[i:j] for r in by_start[t]]))
        j = i
    return out[::-1]


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
