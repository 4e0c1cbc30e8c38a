"""Which layers an edit touches: one specification type and one resolver for every editor.

A layer specification is

* ``None`` — the editor's default (its hyperparameters' layer or window);
* ``"auto"`` — the layer a **measured layer sweep** found best for this model and method, when one
  is recorded for the model's weights (``knowscope/data/measured_layers.json``, written by
  ``benchmarks/bench_sweep.py`` from :func:`knowscope.sweep.recommend_layer`); otherwise what
  ``"locate"`` gives. The sweep on SmolLM2-135M-Instruct (40 facts × 30 layers, issue #18) showed
  that the causal-tracing peak is a poor edit layer there: ``locate()`` picks MLP layer 4, ROME
  works best at layer 1 (see the README, "Does locating inform editing?");
* ``"locate"`` — the layer (or a window of layers centred on it) that
  :func:`knowscope.circuits.locate` picks for the requests: the largest MLP indirect effect at the
  last subject token;
* a layer index, or a sequence of indices.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

from knowscope.circuits.tracing import locate, window_layers
from knowscope.facts import Fact
from knowscope.models import Model

log = logging.getLogger(__name__)

LayerSpec = int | Sequence[int] | Literal["auto", "locate"] | None

#: the packaged table of measured best layers, keyed by model fingerprint, then method
MEASURED_LAYERS_FILE = "measured_layers.json"


@dataclass(frozen=True)
class MeasuredLayer:
    """The layer a saved layer sweep measured best for one model and method, with its evidence."""

    method: str
    layer: int                     # the best centre (MEMIT: the window is centred on it)
    metric: str                    # what "best" means (CounterFact score: harmonic mean of the three)
    value: float                   # mean ``metric`` at ``layer`` over the sweep's facts
    located_layer: int | None      # what locate() picks from the same sweep's traces
    located_value: float | None    # mean ``metric`` there
    window: int                    # MEMIT window width of the sweep (1 for single-layer methods)
    n_facts: int
    n_cells: int
    source: str                    # the store it was read from

    def layers(self, n_layers: int, window: int | None = None) -> list[int]:
        """The layers to edit: ``[layer]``, or ``window`` layers centred on it (clipped to the model)."""
        if window is None or window <= 1:
            return [self.layer]
        return list(window_layers(self.layer, window, n_layers))


@cache
def _measured_table() -> dict[str, Any]:
    path = resources.files("knowscope.data").joinpath(MEASURED_LAYERS_FILE)
    if not path.is_file():  # no sweep recorded yet: "auto" falls back to locate() for every model
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("models", {})


def measured_layer(model: Model, method: str) -> MeasuredLayer | None:
    """The recorded best layer for ``model`` (matched by weight fingerprint) and ``method``, or ``None``."""
    entry = _measured_table().get(model.fingerprint, {}).get(method.lower())
    if entry is None:
        return None
    return MeasuredLayer(method=method.lower(), **{k: entry[k] for k in (
        "layer", "metric", "value", "located_layer", "located_value", "window", "n_facts", "n_cells", "source")})


def _auto(model: Model, requests: Sequence[Fact], method: str, window: int | None) -> list[int]:
    measured = measured_layer(model, method)
    if measured is None:
        log.info("no measured layer sweep for %s on this model: 'auto' uses locate()", method)
        return _located(model, requests, window)
    out = measured.layers(model.arch.n_layers, window)
    log.info("'auto' edits %s at %s: best %s (%.3f) in a sweep of %d facts (locate() would pick %s)",
             method, out, measured.metric, measured.value, measured.n_facts, measured.located_layer)
    return out


def _located(model: Model, requests: Sequence[Fact], window: int | None) -> list[int]:
    if not requests:
        raise ValueError("layers='locate' needs the requests to trace; none were given")
    return [int(x) for x in locate(model, list(requests), kind="mlp", window=window).layers]


def resolve_layers(model: Model, requests: Sequence[Fact], spec: LayerSpec, default: Sequence[int], *,
                   method: str, window: int | None = None, exactly_one: bool = False) -> list[int]:
    """The sorted, checked layer indices ``spec`` names for ``method`` (used in error messages).

    ``default`` serves ``None``; ``window`` is the size of the window ``"auto"`` / ``"locate"`` choose
    (``None``: one layer); ``exactly_one`` refuses more than one layer (ROME). Duplicates, an empty
    list, booleans, other strings and layers out of range raise ``ValueError`` naming the value.
    """
    if spec is None:
        out = [int(x) for x in default]
    elif isinstance(spec, str):
        if spec == "auto":
            out = _auto(model, requests, method, window)
        elif spec == "locate":
            out = _located(model, requests, window)
        else:
            raise ValueError(f"layers={spec!r} is not valid for {method}; give 'auto', 'locate', a layer index, "
                             "a list of layer indices or None")
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
