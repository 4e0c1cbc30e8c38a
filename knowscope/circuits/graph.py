"""The computation graph of a transformer, as index arithmetic over tensors (no object per edge).

Nodes that *write* to the residual stream ("forward nodes", in topological order):

* ``input``: the embeddings entering block 0 (``blocks.0.hook_resid_pre``; token + positional);
* ``a{L}.h{H}``: each attention head's output (``blocks.L.attn.hook_result``);
* ``m{L}``: each MLP's output (``blocks.L.hook_mlp_out``).

Places that *read* the residual stream ("slots"):

* ``a{L}.h{H}<q>``: the query input of each head;
* ``a{L}.g{G}<k>`` / ``a{L}.g{G}<v>``: the key / value input of each KV head ``G`` (on a
  grouped-query-attention model one KV head is shared by ``n_heads / n_kv_heads`` query heads;
  on GPT-2 ``G`` runs over all heads);
* ``m{L}``: the MLP input (before its layer norm);
* ``logits``: the input of the final layer norm.

An edge ``u -> v`` exists when ``u`` is upstream of ``v`` in the forward pass: the input feeds
everything; the heads of layer ``L`` feed the MLP of layer ``L`` and everything in later layers;
the MLP of layer ``L`` feeds layer ``L + 1`` onwards. Because the forward nodes are ordered
topologically, the upstream set of every slot is a *prefix* of the forward nodes, so the edge set
is a ``[n_forward, n_slots]`` boolean matrix whose column ``v`` is ``True`` on its first
``n_upstream[v]`` rows. Scores and circuit membership are tensors of that same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from knowscope.models import Model

SLOT_KINDS = ("q", "k", "v", "mlp", "logits")
NODE_KINDS = ("input", "head", "mlp")


@dataclass(frozen=True)
class Graph:
    """Edge structure of a model with ``n_layers`` blocks of ``n_heads`` heads and ``n_kv_heads`` KV heads."""

    n_layers: int
    n_heads: int
    n_kv_heads: int

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "n_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @classmethod
    def from_model(cls, model: Model) -> Graph:
        """The graph of a :class:`knowscope.models.Model` (reads its :class:`ArchInfo`)."""
        a = model.arch
        return cls(n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads)

    # --- index arithmetic -----------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def slots_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_slots(self) -> int:
        return self.n_layers * self.slots_per_layer + 1

    def head_node(self, layer: int, head: int) -> int:
        """Forward index of head ``head`` of layer ``layer``."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_node(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def q_slot(self, layer: int, head: int) -> int:
        return layer * self.slots_per_layer + head

    def k_slot(self, layer: int, group: int) -> int:
        return layer * self.slots_per_layer + self.n_heads + group

    def v_slot(self, layer: int, group: int) -> int:
        return layer * self.slots_per_layer + self.n_heads + self.n_kv_heads + group

    def mlp_slot(self, layer: int) -> int:
        return layer * self.slots_per_layer + self.n_heads + 2 * self.n_kv_heads

    @property
    def logits_slot(self) -> int:
        return self.n_slots - 1

    def layer_slots(self, layer: int) -> slice:
        """The attention slots (q, k, v) of one layer, contiguous."""
        start = layer * self.slots_per_layer
        return slice(start, start + self.n_heads + 2 * self.n_kv_heads)

    # --- per-node / per-slot tables -------------------------------------------------------------
    @cached_property
    def node_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @cached_property
    def slot_names(self) -> list[str]:
        names: list[str] = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            names += [f"a{layer}.g{g}<k>" for g in range(self.n_kv_heads)]
            names += [f"a{layer}.g{g}<v>" for g in range(self.n_kv_heads)]
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def node_kind(self) -> list[str]:
        return ["input"] + (["head"] * self.n_heads + ["mlp"]) * self.n_layers

    @cached_property
    def node_layer(self) -> Int[Tensor, " n_forward"]:
        """Layer of each forward node (-1 for the input)."""
        per = [[layer] * (self.n_heads + 1) for layer in range(self.n_layers)]
        return torch.tensor([-1] + [x for p in per for x in p])

    @cached_property
    def slot_kind(self) -> list[str]:
        per = ["q"] * self.n_heads + ["k"] * self.n_kv_heads + ["v"] * self.n_kv_heads + ["mlp"]
        return per * self.n_layers + ["logits"]

    @cached_property
    def slot_layer(self) -> Int[Tensor, " n_slots"]:
        """Layer of each slot (``n_layers`` for the logits)."""
        return torch.tensor([layer for layer in range(self.n_layers) for _ in range(self.slots_per_layer)]
                            + [self.n_layers])

    @cached_property
    def n_upstream(self) -> Int[Tensor, " n_slots"]:
        """How many forward nodes (a prefix) feed each slot."""
        out = []
        for layer in range(self.n_layers):
            attn = 1 + layer * (self.n_heads + 1)
            out += [attn] * (self.n_heads + 2 * self.n_kv_heads) + [attn + self.n_heads]
        return torch.tensor(out + [self.n_forward])

    @cached_property
    def edge_mask(self) -> Bool[Tensor, "n_forward n_slots"]:
        """``True`` where an edge exists."""
        return torch.arange(self.n_forward)[:, None] < self.n_upstream[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.n_upstream.sum())

    @cached_property
    def slot_owner(self) -> Bool[Tensor, "n_slots n_forward"]:
        """``[v, u]`` is ``True`` when slot ``v`` is an input of forward node ``u`` (k/v slots of a
        KV head belong to every query head of its group; the logits slot belongs to no node)."""
        own = torch.zeros(self.n_slots, self.n_forward, dtype=torch.bool)
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                node = self.head_node(layer, h)
                g = h // self.group_size
                own[self.q_slot(layer, h), node] = True
                own[self.k_slot(layer, g), node] = True
                own[self.v_slot(layer, g), node] = True
            own[self.mlp_slot(layer), self.mlp_node(layer)] = True
        return own

    # --- names ------------------------------------------------------------------------------------
    def node_index(self, name: str) -> int:
        try:
            return self.node_names.index(name)
        except ValueError:
            raise ValueError(f"unknown node {name!r}; nodes look like 'input', 'a3.h1', 'm3'") from None

    def slot_index(self, name: str) -> int:
        try:
            return self.slot_names.index(name)
        except ValueError:
            raise ValueError(f"unknown slot {name!r}; slots look like 'a3.h1<q>', 'a3.g0<k>', 'm3', 'logits'") from None

    def edge_name(self, u: int, v: int) -> str:
        return f"{self.node_names[u]}->{self.slot_names[v]}"

    def slot_node_name(self, v: int) -> str:
        """The node a slot belongs to, by name (``a3.h1`` for ``a3.h1<q>``; ``a3.g0`` for a KV slot)."""
        return self.slot_names[v].split("<")[0]

    def to_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graph:
        return cls(n_layers=int(d["n_layers"]), n_heads=int(d["n_heads"]), n_kv_heads=int(d["n_kv_heads"]))


def count_edges(n_layers: int, n_heads: int, n_kv_heads: int) -> int:
    """Closed-form edge count (used to check :class:`Graph`).

    Attention slots of layer ``l`` (``n_heads + 2 n_kv_heads`` of them) read ``1 + l (n_heads + 1)``
    nodes; the MLP of layer ``l`` reads ``1 + l (n_heads + 1) + n_heads``; the logits read all
    ``1 + n_layers (n_heads + 1)``.
    """
    L, H, K = n_layers, n_heads, n_kv_heads
    tri = L * (L - 1) // 2
    attn = (H + 2 * K) * (L + (H + 1) * tri)
    mlp = L * (1 + H) + (H + 1) * tri
    return attn + mlp + 1 + L * (H + 1)
