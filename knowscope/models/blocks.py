"""Running the model's blocks one at a time, outside the bridge's full forward pass.

Causal tracing (``circuits.tracing``) and the editors' v*/z optimisation (``editing.vpaths``)
both re-run only part of the network many times: the blocks from some layer up, on a residual
stream recorded once. :func:`run_block` calls one TransformerBridge block the way the bridge's own
forward pass does (rotary position embeddings computed for the positions it runs), optionally
with the earlier positions' keys/values given as a cache.
Hooks registered on the bridge's HookPoints fire as in a full forward pass. Whether this
reproduces the bridge on a given install is checked by the callers (once per model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope import hooks as hk
from knowscope.models.wrapper import Model


class _Stop(Exception):
    """Ends a recording forward pass once the wanted block input has been read."""


@torch.no_grad()
def block_input(model: Model, layer: int, tokens: Tensor, hooks: Sequence[tuple[str, Any]] = ()) -> Tensor:
    """The input of block ``layer`` on ``tokens`` as the bridge computes it (``hooks`` run on the way)."""
    store: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any) -> None:
        store["h"] = act.detach().clone()
        raise _Stop

    try:
        model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, (hk.resid_pre(layer), save)])
    except _Stop:
        pass
    return store["h"]


class PrefixKV:
    """A minimal KV cache for one block call: prepends fixed keys/values, optionally records them.

    The bridge's attention calls ``cache.update(k, v, layer_idx)`` after RoPE and uses what it
    returns as the full keys and values (its causal mask is offset by the cached length).
    """

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None,
                 record: dict[int, tuple[Tensor, Tensor]] | None = None) -> None:
        self.k, self.v, self.record = k, v, record

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.k is not None:
            k = torch.cat([self.k.to(k.dtype), k], dim=-2)
            v = torch.cat([self.v.to(v.dtype), v], dim=-2)
        if self.record is not None:
            self.record[layer_idx] = (k, v)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.k is None else int(self.k.shape[-2])


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean ``[batch, query, key]`` attention pattern as the additive ``[batch, 1, query, key]`` mask
    that :func:`run_block` takes (0 where allowed, the dtype's minimum where not)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def supports_block_runs(model: Model) -> bool:
    """Blocks can be run alone for absolute-learned (GPT-2) and rotary (Llama) positions."""
    return model.arch.positional in ("standard", "rotary")


def run_block(model: Model, layer: int, h: Float[Tensor, "batch pos d_model"], start: int = 0,
              cache: Any = None, *, position_ids: Int[Tensor, "batch pos"] | None = None,
              attention_mask: Float[Tensor, "batch 1 pos kv"] | None = None) -> Float[Tensor, "batch pos d_model"]:
    """Run block ``layer`` on positions ``start..start+pos`` of ``h`` (earlier positions via ``cache``).

    The cache goes in under the keyword the decoder layer declares (found at load time,
    :func:`knowscope.compat.cache_keyword`); ``cache=None`` runs the block on ``h`` alone, which then
    must start at position 0. ``position_ids`` (rotary models) replaces the consecutive positions and
    ``attention_mask``, an additive 4-D mask over the keys (0 where a query may attend, the dtype's
    minimum where not), replaces the causal mask: together they run sequences packed as a tree
    (:func:`knowscope.editing.scoring.score_continuations`).
    """
    bridge = model.bridge
    kwargs: dict[str, Any] = {}
    if cache is not None:
        keyword = model.compat.cache_keyword
        if keyword is None:
            raise RuntimeError("this model's decoder layers take no KV cache")
        kwargs[keyword] = cache
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if model.arch.positional == "rotary":
        pos = position_ids if position_ids is not None else \
            torch.arange(start, start + h.shape[1], device=h.device).unsqueeze(0)
        kwargs["position_embeddings"] = bridge.rotary_emb(h, pos)
        kwargs["position_ids"] = pos
    elif position_ids is not None:
        raise ValueError(f"explicit positions need rotary position embeddings, not {model.arch.positional!r}")
    out = bridge.blocks[layer](h, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def final_logits(model: Model, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """The model's final norm and unembedding on residual vectors (any leading shape)."""
    return model.bridge.unembed(model.bridge.ln_final(h))
