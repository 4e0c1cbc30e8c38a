"""Hook names, in TransformerLens's vocabulary, built in one place.

Every module that hooks the bridge names its hook points through these functions (``ArchInfo``'s
``hook_*`` helpers return the same strings), so a renamed hook point is one edit here.
"""

from __future__ import annotations

from typing import Literal

#: the token-embedding hook (before GPT-2 adds position embeddings), where causal tracing adds noise
EMBED = "hook_embed"

#: the per-layer outputs a trace restores
SiteKind = Literal["mlp", "attn", "resid"]


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def out(kind: SiteKind, layer: int) -> str:
    """The output of a layer's ``mlp`` / ``attn`` block, or the residual stream after it (``resid``)."""
    if kind == "mlp":
        return mlp_out(layer)
    if kind == "attn":
        return attn_out(layer)
    if kind == "resid":
        return resid_post(layer)
    raise ValueError(f"unknown site kind {kind!r}; valid: mlp, attn, resid")


def mlp_in(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_in"


def mlp_key(layer: int) -> str:
    """The MLP's hidden activation: ROME/MEMIT's key (the input of the output projection)."""
    return f"blocks.{layer}.mlp.hook_post"


def z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def attn_result(layer: int) -> str:
    """Per-head attention outputs (needs ``set_use_attn_result``)."""
    return f"blocks.{layer}.attn.hook_result"


def q_input(layer: int) -> str:
    return f"blocks.{layer}.hook_q_input"


def k_input(layer: int) -> str:
    return f"blocks.{layer}.hook_k_input"


def v_input(layer: int) -> str:
    return f"blocks.{layer}.hook_v_input"
