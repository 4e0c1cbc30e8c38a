"""Architecture facts of a loaded model: layer and head counts, hook names in TransformerLens's
vocabulary, and where each layer's MLP output projection lives (all ROME/MEMIT/DINM need)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from knowscope import hooks as hk

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do instead."""


@dataclass(frozen=True)
class ArchInfo:
    """What later modules need to know about one model's architecture.

    ``mlp_out_layout`` is ``"out_in"`` for ``nn.Linear`` (weight is ``[d_model, d_mlp]``, Llama's
    ``down_proj``) and ``"in_out"`` for GPT-2's ``Conv1D`` (weight is ``[d_mlp, d_model]``,
    ``c_proj``). The MLP *key* of ROME/MEMIT is the input of that projection, hook
    ``blocks.{L}.mlp.hook_post``; its *value* is the projection's output, ``blocks.{L}.hook_mlp_out``.
    """

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_mlp: int
    d_head: int
    d_vocab: int
    mlp_out_names: tuple[str, ...]
    mlp_out_layout: str
    positional: str

    def mlp_out_name(self, layer: int) -> str:
        """HF parameter name of layer ``layer``'s MLP output-projection weight."""
        self.check_layer(layer)
        return self.mlp_out_names[layer]

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")
        return layer

    # hook names, in TransformerLens's vocabulary
    @staticmethod
    def hook_embed() -> str:
        return hk.EMBED

    @staticmethod
    def hook_resid_pre(layer: int) -> str:
        return hk.resid_pre(layer)

    @staticmethod
    def hook_resid_post(layer: int) -> str:
        return hk.resid_post(layer)

    @staticmethod
    def hook_mlp_out(layer: int) -> str:
        return hk.mlp_out(layer)

    @staticmethod
    def hook_attn_out(layer: int) -> str:
        return hk.attn_out(layer)

    @staticmethod
    def hook_mlp_key(layer: int) -> str:
        return hk.mlp_key(layer)

    @staticmethod
    def hook_z(layer: int) -> str:
        return hk.z(layer)

    @staticmethod
    def hook_pattern(layer: int) -> str:
        return hk.pattern(layer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "d_head": self.d_head,
            "d_vocab": self.d_vocab,
            "mlp_out_layout": self.mlp_out_layout,
            "mlp_out_example": self.mlp_out_names[0] if self.mlp_out_names else None,
            "positional": self.positional,
        }


def clean_param_name(name: str) -> str:
    """Strip the bridge's ``._original_component`` wrappers from a parameter name."""
    return name.replace("._original_component", "")


def _describe(bridge: Any) -> ArchInfo:
    """Read the architecture facts off a booted bridge (architecture-agnostic where possible)."""
    cfg = bridge.cfg
    hf = bridge.original_model
    by_id = {id(p): clean_param_name(n) for n, p in hf.named_parameters()}
    names: list[str] = []
    layout = "out_in"
    for block in bridge.blocks:
        module = block.mlp.out.original_component
        weight = module.weight
        if id(weight) not in by_id:
            raise ModelLoadError("could not find the MLP output projection's weight among the HF parameters")
        names.append(by_id[id(weight)])
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
        layout = "out_in" if isinstance(module, nn.Linear) else "in_out"
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return ArchInfo(
        family=str(getattr(hf.config, "model_type", "unknown")),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        mlp_out_names=tuple(names),
        mlp_out_layout=layout,
        positional=str(getattr(cfg, "positional_embedding_type", "standard")),
    )
