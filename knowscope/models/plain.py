"""Llama-family decoder blocks as plain tensor code, for loops that re-run the upper layers many times.

The editors' v*/z optimisation runs the blocks above the edited layer forward and backward a few
dozen times on a handful of positions (``editing.vpaths``). There a bridge block call — hook
points, the bridge's attention re-implementation, the HF layer's argument handling — costs about
as much Python per call as its small matrix products take. :class:`PlainBlocks` runs the same
arithmetic straight from the weights: RMSNorm, q/k/v projections, rotary embeddings, grouped-query
attention through ``scaled_dot_product_attention`` with an explicit mask and a fixed key/value
prefix, the gated SiLU MLP, and the final norm and unembedding. No hooks fire and nothing is
copied (the module reads the live parameters, so edits applied before a call are seen).

Only the plain Llama shape is supported (Llama, SmolLM2, Qwen2 and Mistral without a sliding
window...); :class:`PlainBlocks` raises :class:`PlainUnavailable` with the reason for anything else
(q/k norms, soft-capping, sinks, sliding windows, layers without rotary, partial or interleaved
rotary, another activation), and :class:`PlainNotNow` while hooks are registered on the blocks or a
bridge setting reroutes attention inputs. Agreement with the bridge is not assumed: callers
compare logits once per model before using it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from knowscope.models.wrapper import Model


class PlainUnavailable(RuntimeError):
    """This model's blocks are not the plain Llama shape :class:`PlainBlocks` implements."""


class PlainNotNow(PlainUnavailable):
    """The blocks are plain Llama, but a state that can change rules plain code out for now: hooks
    registered on the blocks (plain code would skip them) or a bridge setting that reroutes attention
    inputs (``use_split_qkv_input`` and the like, switched on by edge attribution)."""


@dataclass(frozen=True)
class _Norm:
    weight: Tensor
    eps: float

    def __call__(self, h: Tensor) -> Tensor:
        # as LlamaRMSNorm: normalise in float32, scale in the input dtype
        x = h.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(h.dtype)


@dataclass(frozen=True)
class _Linear:
    weight: Tensor  # [out, in]
    bias: Tensor | None

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class _Block:
    ln1: _Norm
    ln2: _Norm
    q: _Linear
    k: _Linear
    v: _Linear
    o: _Linear
    gate: _Linear
    up: _Linear
    down: _Linear
    scaling: float


def _norm(component: Any, where: str) -> _Norm:
    module = getattr(component, "original_component", None)
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    plain_rms = "RMSNorm" in type(module).__name__ and getattr(module, "bias", None) is None
    if weight is None or eps is None or not plain_rms:
        raise PlainUnavailable(f"{where} is not an RMSNorm ({type(module).__name__})")
    if "Gemma" in type(module).__name__:  # Gemma's RMSNorm scales by (1 + weight)
        raise PlainUnavailable(f"{where} is Gemma's RMSNorm")
    return _Norm(weight.detach(), float(eps))


def _linear(component: Any, where: str) -> _Linear:
    module = getattr(component, "original_component", None)
    if not isinstance(module, nn.Linear):
        raise PlainUnavailable(f"{where} is not an nn.Linear ({type(module).__name__})")
    return _Linear(module.weight.detach(), None if module.bias is None else module.bias.detach())


def _check_config(model: Model) -> None:
    cfg = model.hf.config
    if model.arch.positional != "rotary":
        raise PlainUnavailable(f"positions are {model.arch.positional!r}, not rotary")
    if getattr(cfg, "hidden_act", None) != "silu":
        raise PlainUnavailable(f"the MLP activation is {getattr(cfg, 'hidden_act', None)!r}, not silu")
    for key in ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping", "clip_qkv",
                "logit_scale", "residual_multiplier", "attention_multiplier", "embedding_multiplier"):
        if getattr(cfg, key, None) not in (None, False):
            raise PlainUnavailable(f"config.{key} is set")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        raise PlainUnavailable("llama-4 query scaling")
    if getattr(cfg, "no_rope_layers", None) or getattr(cfg, "no_rope_layer_interval", None):
        raise PlainUnavailable("some layers run without rotary embeddings")
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None and int(head_dim) != model.arch.d_head:
        raise PlainUnavailable(f"config.head_dim {head_dim} differs from the bridge's d_head {model.arch.d_head}")
    bcfg = model.bridge.cfg
    for key in ("rotary_interleaved_cos_sin", "rotary_adjacent_pairs", "gated_q_proj", "qk_norm_after_rope"):
        if getattr(bcfg, key, False):
            raise PlainUnavailable(f"bridge cfg.{key} is set")
    for key in ("use_split_qkv_input", "use_attn_in", "use_attn_result"):
        if getattr(bcfg, key, False):
            raise PlainNotNow(f"bridge cfg.{key} is switched on")


def _check_no_hooks(modules: list[nn.Module]) -> None:
    """Plain code fires no hooks, so a user hook on a HookPoint of the modules it replaces rules it out
    (for now). The bridge's own wiring hooks on the wrapped HF modules are not user hooks."""
    for top in modules:
        for module in top.modules():
            if isinstance(module, HookPoint) and (module._forward_hooks or module._forward_pre_hooks):
                raise PlainNotNow(f"a hook is registered on {getattr(module, 'name', None) or type(module).__name__}")


def _block(model: Model, layer: int) -> _Block:
    b = model.bridge.blocks[layer]
    where = f"block {layer}"
    attn, mlp = b.attn, b.mlp
    hf_attn = getattr(attn, "original_component", None)
    for name in ("q_norm", "k_norm", "gate"):
        if name in getattr(attn, "_modules", {}):
            raise PlainUnavailable(f"{where}'s attention has {name}")
    for name in ("sinks", "key_multiplier", "attn_logit_softcapping"):
        if getattr(hf_attn, name, None) is not None:
            raise PlainUnavailable(f"{where}'s attention has {name}")
    if getattr(hf_attn, "sliding_window", None) is not None:
        raise PlainUnavailable(f"{where} uses a sliding window")
    act = getattr(getattr(mlp, "original_component", None), "act_fn", None)
    if act is None or type(act).__name__ not in ("SiLU", "SiLUActivation"):
        raise PlainUnavailable(f"{where}'s MLP activation is {type(act).__name__}, not SiLU")
    if "gate" not in getattr(mlp, "_modules", {}):
        raise PlainUnavailable(f"{where}'s MLP is not gated")
    head_dim = int(getattr(hf_attn, "head_dim", model.arch.d_head))
    return _Block(
        ln1=_norm(b.ln1, f"{where} ln1"), ln2=_norm(b.ln2, f"{where} ln2"),
        q=_linear(attn.q, f"{where} q"), k=_linear(attn.k, f"{where} k"), v=_linear(attn.v, f"{where} v"),
        o=_linear(attn.o, f"{where} o"),
        gate=_linear(mlp.gate, f"{where} gate"), up=_linear(getattr(mlp, "in"), f"{where} in"),
        down=_linear(mlp.out, f"{where} out"),
        scaling=float(getattr(hf_attn, "scaling", head_dim ** -0.5)),
    )


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class PlainBlocks:
    """Blocks ``first..n_layers-1`` of a Llama-family model, the final norm and the unembedding, as
    plain tensor code on the model's live weights (see the module docstring). Raises
    :class:`PlainUnavailable` (or :class:`PlainNotNow`) with the reason where that code would not apply."""

    def __init__(self, model: Model, first: int) -> None:
        _check_config(model)
        self.model = model
        self.blocks = {layer: _block(model, layer) for layer in range(first, model.arch.n_layers)}
        self.n_heads, self.n_kv, self.d_head = model.arch.n_heads, model.arch.n_kv_heads, model.arch.d_head
        self.ln_final = _norm(model.bridge.ln_final, "the final norm")
        unembed = _linear(model.bridge.unembed, "the unembedding")
        self.w_u, self.b_u = unembed.weight, unembed.bias
        _check_no_hooks([model.bridge.blocks[layer] for layer in self.blocks]
                        + [model.bridge.ln_final, model.bridge.unembed])

    def rotary(self, h: Tensor, positions: Int[Tensor, "batch pos"]) -> tuple[Tensor, Tensor]:
        """``cos, sin`` for ``positions`` from the model's own rotary module, shaped to broadcast over heads."""
        cos, sin = self.model.bridge.rotary_emb(h, positions)
        if cos.shape[-1] != self.d_head:
            raise PlainUnavailable(f"partial rotary embeddings ({cos.shape[-1]} of {self.d_head} dims)")
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def run(self, layer: int, h: Float[Tensor, "batch pos d_model"], rotary: tuple[Tensor, Tensor],
            mask: Float[Tensor, "batch 1 pos kv"],
            past: tuple[Tensor, Tensor] | None = None) -> Float[Tensor, "batch pos d_model"]:
        """Block ``layer`` on ``h``: ``rotary`` from :meth:`rotary` for these positions, ``mask`` additive over
        the keys (``past``'s first, then ``h``'s), ``past`` the earlier positions' keys and values after
        rotary embedding, ``[batch, kv heads, prefix, head dim]``."""
        blk = self.blocks[layer]
        batch, n_pos, _ = h.shape
        cos, sin = rotary
        x = blk.ln1(h)
        q = blk.q(x).view(batch, n_pos, self.n_heads, self.d_head).transpose(1, 2)
        k = blk.k(x).view(batch, n_pos, self.n_kv, self.d_head).transpose(1, 2)
        v = blk.v(x).view(batch, n_pos, self.n_kv, self.d_head).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=-2)
            v = torch.cat([past[1].to(v.dtype), v], dim=-2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=blk.scaling,
                                           enable_gqa=self.n_kv != self.n_heads)
        h = h + blk.o(a.transpose(1, 2).reshape(batch, n_pos, self.n_heads * self.d_head))
        x = blk.ln2(h)
        return h + blk.down(F.silu(blk.gate(x)) * blk.up(x))

    def logits(self, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n vocab"]:
        """Final norm and unembedding of residual vectors ``[n, d_model]``, computed as ``(W_U @ xᵀ)ᵀ``: for a
        few rows against a large vocabulary MKL runs that order faster than ``x @ W_Uᵀ`` here (a ROME edit
        ~7% faster than with ``F.linear``, measured alternating in one run)."""
        out = (self.w_u @ self.ln_final(h).t()).t()
        return out if self.b_u is None else out + self.b_u

