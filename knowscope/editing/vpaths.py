"""The forward pass of the v*/z optimisation, and the check that picks it.

Each step of :func:`~knowscope.editing.optimize.optimize_deltas` needs the logits at the positions
its loss reads, with each row's delta added at the edited hook. The bridge's full forward pass is
the reference; a faster path is used only where, checked once per model and hook, it reproduces the
bridge's logits with a non-zero delta, and the next one down runs otherwise (:data:`VPath`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from knowscope.compat import EDIT_PATHS
from knowscope.models import Model
from knowscope.models.blocks import (
    PrefixKV,
    additive_mask,
    block_input,
    final_logits,
    run_block,
    supports_block_runs,
)
from knowscope.models.plain import PlainBlocks, PlainNotNow, PlainUnavailable

logger = logging.getLogger(__name__)


#: which forward pass :func:`~knowscope.editing.optimize.optimize_delta` runs, fastest first:
#:
#: * ``"plain"`` (default) — ``"packed"`` with the blocks, final norm and unembedding run as plain tensor
#:   code from the weights (:mod:`knowscope.models.plain`; Llama-family models only), no bridge calls;
#:   the fastest path on Llama models (docs/benchmarks.md, "Which v*/z forward pass");
#: * ``"packed"`` — the residual after the edited layer is recorded once, with every later
#:   layer's keys/values; each step runs the blocks above the edited layer once per block on every
#:   row's positions from its subject's last token on (earlier positions cannot see the delta under
#:   causal attention), the rows left-aligned, each at its own positions, with the earlier positions'
#:   keys/values as a cache that an explicit mask cuts at each row's start; the final norm and
#:   unembedding only where the loss reads logits; the fastest path on GPT-2;
#: * ``"bridge"`` — the bridge's full forward pass with a hook, every position's logits: the reference.
#:
#: All three give the same deltas (tests/unit/test_vpaths.py). The first two are used only where,
#: checked once per model and hook (kind and layer), they reproduce the bridge's logits with a non-zero
#: delta; otherwise the next one down runs.
VPath = Literal["plain", "packed", "bridge"]
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


def selected_logits_fn(model: Model, hook_name: str, tokens: Tensor, look: Tensor, sel_rows: Tensor,
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
    builders = {"plain": functools.partial(_packed_forward, plain=True), "packed": _packed_forward}
    for path in V_PATHS[V_PATHS.index(wanted):-1]:
        if checks.get((hook_name, path)) is False:
            continue
        try:
            fn = builders[path](model, layer, hook_name, tokens, look, sel_rows, sel_pos)
        except _NotForThisCall as exc:
            logger.debug("v*/z path %r skipped for this call: %s", path, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any failure to build a path means: use the next slower one
            logger.info("v*/z path %r is not available at %s: %s", path, hook_name, exc)
            checks[(hook_name, path)] = False
            continue
        # the per-row prefix mask is only exercised by rows with different subject positions
        conclusive = int(look.unique().numel()) > 1
        if (hook_name, path) in checks or _reproduces_bridge(model, hook_name, path, fn, bridge, tokens.shape[0],
                                                             record=conclusive):
            if not recorded:  # only from a path that reproduces the bridge
                note_init(fn.init_at_look)  # type: ignore[attr-defined]
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


@dataclass
class _AboveRecord:
    """What the packed paths record once: the unedited residual after the edited block, every later
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
                    sel_pos: Tensor, plain: bool = False) -> Forward:
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
