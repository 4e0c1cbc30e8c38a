"""Which layers an edit touches: one specification type and one resolver for every editor.

A layer specification is ``None`` (the editor's default), ``"auto"`` (the layer - or a window of
layers - that :func:`knowscope.circuits.locate` picks for the requests: the largest MLP indirect
effect at the last subject token), a layer index, or a sequence of indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from knowscope.circuits.tracing import locate
from knowscope.facts import Fact
from knowscope.models import Model

LayerSpec = int | Sequence[int] | Literal["auto"] | None


def resolve_layers(model: Model, requests: Sequence[Fact], spec: LayerSpec, default: Sequence[int], *,
                   method: str, window: int | None = None, exactly_one: bool = False) -> list[int]:
    """The sorted, checked layer indices ``spec`` names for ``method`` (used in error messages).

    ``default`` serves ``None``; ``window`` is the size of the window ``"auto"`` locates (``None``: one
    layer); ``exactly_one`` refuses more than one layer (ROME). Duplicates, an empty list, booleans,
    strings other than ``"auto"`` and layers out of range raise ``ValueError`` naming the value.
    """
    if spec is None:
        out = [int(x) for x in default]
    elif isinstance(spec, str):
        if spec != "auto":
            raise ValueError(f"layers={spec!r} is not valid for {method}; give 'auto', a layer index, a list of "
                             "layer indices or None")
        out = [int(x) for x in locate(model, list(requests), kind="mlp", window=window).layers]
    elif isinstance(spec, bool):
        raise ValueError(f"layers={spec!r} is not a layer index")
    elif isinstance(spec, int):
        out = [spec]
    else:
        out = []
        for x in spec:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"layers={list(spec)!r}: {x!r} is not a layer index")
            out.append(x)
    if not out:
        raise ValueError(f"layers is empty; give at least one layer to edit with {method}")
    for layer in out:
        model.arch.check_layer(layer)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {out} contain duplicates")
    if exactly_one and len(out) != 1:
        raise ValueError(f"{method} edits exactly one layer; got layers={out!r} (use MEMIT for several layers)")
    return sorted(out)
