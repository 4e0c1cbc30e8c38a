"""Weight guards: editors that change weights while they compute put them back bit for bit.

:class:`WeightGuard` restores named weights on exit; :class:`TrainableWeights` also makes them
trainable inside the block (FT, DINM) with an L-inf clamp around the saved values.
:func:`mlp_out_parameters` names the MLP output projections (and biases) an editor trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from knowscope.models import Model


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
