"""The fast path's partial forward pass: running single blocks from a recorded run, with the earlier
positions' keys/values fed in as a KV cache (``"suffix"``) or recomputed (``"full"``), checked against
the bridge's own forward pass."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from knowscope import hooks as hk
from knowscope.compat import FIX_HINT
from knowscope.models import Model
from knowscope.models.blocks import PrefixKV as _PrefixKV
from knowscope.models.blocks import block_input, run_block, supports_block_runs

logger = logging.getLogger(__name__)


class _OutputPatch:
    """Forward hook on a HookPoint that overwrites ``out[rows, pos]`` (token t of a partial pass)."""

    def __init__(self, rows: Tensor, values: Tensor, pos: int = 0) -> None:
        self.rows, self.values, self.pos = rows, values, pos

    def __call__(self, module: Any, inputs: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[self.rows, self.pos] = self.values.to(out.dtype)
        return out


class _Capture:
    """Forward hook on a HookPoint that stores its output."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, module: Any, inputs: Any, out: Tensor) -> None:
        self.value = out.detach()


def _supports_partial_forward(model: Model) -> bool:
    return supports_block_runs(model)


_block = run_block


@dataclass
class _Record:
    """A run recorded block by block: residual stream at every layer boundary, K/V, mlp/attn outs."""

    resid: list[Tensor]  # n_layers + 1 tensors [batch, pos, d_model]; resid[L] = input of block L
    kv: dict[int, tuple[Tensor, Tensor]]
    mlp: list[Tensor]
    attn: list[Tensor]


def _record_run(model: Model, h0: Tensor, with_kv: bool = True) -> _Record:
    """Run the model block by block from ``h0``, recording what the fast path reuses.

    ``with_kv`` records every layer's keys/values through a recording cache (the ``"suffix"``
    partial forward needs them); a model whose attention never writes to the cache records
    fewer layers than it has, which :func:`_fast_mode` detects.
    """
    n = model.arch.n_layers
    kv: dict[int, tuple[Tensor, Tensor]] = {}
    resid, mlp, attn = [h0], [], []
    hd = model.bridge.hook_dict
    h = h0
    for layer in range(n):
        cm, ca = _Capture(), _Capture()
        handles = [hd[hk.mlp_out(layer)].register_forward_hook(cm),
                   hd[hk.attn_out(layer)].register_forward_hook(ca)]
        try:
            h = _block(model, layer, h, 0, _PrefixKV(record=kv) if with_kv else None)
        finally:
            for hd_ in handles:
                hd_.remove()
        resid.append(h)
        mlp.append(cm.value)
        attn.append(ca.value)
    # the cache is keyed by each attention's own layer index; map it to block order
    keys = sorted(kv)
    return _Record(resid=resid, kv={i: kv[k] for i, k in enumerate(keys)} if len(keys) == n else {},
                   mlp=mlp, attn=attn)


def _fast_mode(model: Model, h0: Tensor, reference: dict[str, Tensor]) -> tuple[str, _Record | None]:
    """How the fast path runs a partial forward pass on this model, measured once per model.

    ``"suffix"``: positions t..end only, the corrupted keys/values of positions < t fed in as a KV
    cache (fastest). ``"full"``: positions 0..end with no cache; positions < t then recompute the
    corrupted run exactly (causal attention), so the result is the same, at more compute. Suffix is
    used when it reproduces the bridge's own forward pass and a suffix pass reproduces the
    recorded positions; otherwise full, when it reproduces the bridge; otherwise this raises.
    ``reference`` holds the bridge's ``blocks.L.hook_resid_post`` activations of the run from ``h0``.
    Returns the mode and, when it was measured now, the checked record of the run from ``h0`` in
    that mode (the caller reuses it instead of recording the run again).
    """
    if model.compat.trace_mode is not None:
        return model.compat.trace_mode, None
    n = model.arch.n_layers
    mode: str | None = None
    rec: _Record | None = None
    problems = []
    if model.compat.cache_keyword is not None:
        try:
            rec = _record_run(model, h0, with_kv=True)
            if not rec.kv:
                raise RuntimeError("the attention did not write keys/values to the cache it was given")
            _check_record(rec, reference, n)
            t = max(1, h0.shape[1] // 2)
            for layer in (0, n - 1):
                k, v = rec.kv[layer]
                out = _block(model, layer, rec.resid[layer][:, t:], t, _PrefixKV(k[:, :, :t], v[:, :, :t]))
                want = rec.resid[layer + 1][:, t:]
                err = float((out - want).abs().max())
                if err > 1e-3 * (float(want.abs().max()) + 1e-6):
                    raise RuntimeError(f"a suffix pass with cached prefix differs at layer {layer} "
                                       f"(max diff {err:.3g})")
            mode = "suffix"
        except Exception as exc:  # noqa: BLE001 - any failure of the cache route falls back to "full"
            problems.append(f"suffix: {exc}")
    if mode is None:
        try:
            rec = _record_run(model, h0, with_kv=False)
            _check_record(rec, reference, n)
            mode = "full"
        except Exception as exc:  # noqa: BLE001 - reported below with what to do
            problems.append(f"full: {exc}")
    if mode is None:
        import transformers

        raise RuntimeError(
            f"method='fast' cannot run this model with transformers {transformers.__version__}: "
            + "; ".join(problems) + f". To fix: {FIX_HINT}")
    if problems:
        logger.info("fast trace runs full-sequence partial passes (%s)", "; ".join(problems))
    model.compat.trace_mode = mode
    return mode, rec


def _resid_pre0(model: Model, tokens: Tensor, noise_hook: Callable | None) -> Tensor:
    """The input of block 0 (embeddings, noise, position embeddings) as the bridge computes it."""
    return block_input(model, 0, tokens, [(hk.EMBED, noise_hook)] if noise_hook is not None else [])


def _check_record(rec: _Record, cache: dict[str, Tensor], n: int, tol: float = 1e-3) -> None:
    """The block-by-block pass must reproduce the bridge's own forward pass (guards unsupported models)."""
    for layer in (0, n - 1):
        ref = cache[hk.resid_post(layer)]
        err = float((rec.resid[layer + 1] - ref).abs().max())
        scale = float(ref.abs().max()) + 1e-6
        if err > tol * scale:
            raise RuntimeError(
                f"the fast path's block-by-block forward pass differs from the bridge's at layer {layer} "
                f"(max abs diff {err:.3g}); method='fast' cannot run this model on this install. To fix: {FIX_HINT}"
            )
