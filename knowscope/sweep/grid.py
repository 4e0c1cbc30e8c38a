"""A sweep's grid: facts × methods × layers × seeds, its cells, and the settings that name it.

A :class:`SweepSpec` is everything that decides a sweep's numbers (model, facts, methods, layers,
seeds, hyperparameter overrides, tracing settings). Its :meth:`SweepSpec.settings` are written into
the store the first time and compared on every re-run, so a store never mixes two sweeps.

A :class:`Cell` is one edit: one fact, one method, one layer, one seed. ROME and FT edit that layer;
MEMIT edits a window of ``window`` layers centred on it and clipped at the model's ends, the rule
of ROME's causal tracing that Hase et al. (2023) also use for their editing windows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from knowscope.circuits.tracing import window_layers
from knowscope.editing.editors import get_editor
from knowscope.facts import Fact

METHODS = ("rome", "memit", "ft")
TRACE_KINDS = ("hidden", "mlp", "attn")
#: the tracing settings of ROME's paper (and of :func:`knowscope.circuits.trace`)
DEFAULT_TRACE = {"samples": 10, "noise": 3.0, "window": 10, "seed": 0}


@dataclass(frozen=True, order=True)
class Cell:
    """One edit of the grid: ``method`` at ``layer`` (MEMIT: the window's centre) on fact ``fact``."""

    method: str
    layer: int
    fact: int  # index into the sweep's fact list
    seed: int = 0

    @property
    def id(self) -> str:
        return f"{self.method}/L{self.layer}/s{self.seed}/f{self.fact}"


def edited_layers(method: str, layer: int, window: int, n_layers: int) -> list[int]:
    """The layers a cell edits: ``[layer]``, or for MEMIT ``window`` layers centred on it, clipped."""
    return list(window_layers(layer, window, n_layers)) if method == "memit" else [layer]


def fact_id(fact: Fact, index: int) -> str:
    """A fact's name in the store: its case id when it has one, else its position."""
    return str(fact.case_id) if fact.case_id is not None else f"#{index}"


def facts_digest(facts: Sequence[Fact]) -> str:
    """A short hash of the facts' identity (subject, prompt, targets): two sweeps on other facts differ."""
    ids = [[f.case_id, f.subject, f.prompt, f.target_true, f.target_new] for f in facts]
    return hashlib.blake2b(json.dumps(ids, default=str).encode(), digest_size=8).hexdigest()


def hparams_hash(hparams: dict[str, Any]) -> str:
    """A short hash of resolved hyperparameters (one column of every row)."""
    return hashlib.blake2b(json.dumps(hparams, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """``"all"``/``None`` → every layer; ``"3-7"``, ``"1,4,9"``, ``"0-29:2"`` (every 2nd) or a list of ints."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            step = 1
            if ":" in part:
                part, step_s = part.split(":", 1)
                step = int(step_s)
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1, step))
            elif part:
                out.append(int(part))
        layers = out
    else:
        layers = [int(x) for x in spec]
    if not layers:
        raise ValueError(f"layers {spec!r} names no layer")
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the model has layers 0-{n_layers - 1}")
    return sorted(set(layers))


def spread(facts: Sequence[Fact], n: int | None) -> list[Fact]:
    """``n`` facts taken round-robin over the relations (in first-seen order), so every relation counts."""
    facts = list(facts)
    if n is None or n >= len(facts):
        return facts
    groups: dict[str, list[Fact]] = {}
    for f in facts:
        groups.setdefault(f.relation_id, []).append(f)
    out: list[Fact] = []
    depth = 0
    while len(out) < n:
        for group in groups.values():
            if depth < len(group) and len(out) < n:
                out.append(group[depth])
        depth += 1
    return out


@dataclass
class SweepSpec:
    """What a sweep measures. ``hparams`` maps a method to overrides of its defaults on the model.

    Args:
        model: the model's name for :func:`knowscope.models.load_model` (every worker loads it).
        facts: the facts; each is edited alone in every cell.
        methods: any of ``rome``, ``memit``, ``ft``.
        layers: layer indices, ``"all"`` or a spec such as ``"0-29"`` (see :func:`parse_layers`).
        seeds: seeds of the v*/z optimisation (and of torch); one cell per seed.
        window: MEMIT's window width (MEMIT's 5 by default).
        trace: tracing settings (``samples``, ``noise``, ``window``, ``seed``; ROME's by default).
        fluency: also generate text per cell for the fluency metric (slow on CPU; off by default).
        device: where every worker runs the model.
    """

    model: str
    facts: list[Fact]
    methods: Sequence[str] = ("rome",)
    layers: str | Sequence[int] = "all"
    seeds: Sequence[int] = (0,)
    window: int = 5
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    fluency: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.facts = list(self.facts)
        if not self.facts:
            raise ValueError("a sweep needs at least one fact")
        self.methods = tuple(str(m).lower() for m in self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown or self.methods}; valid: {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {list(self.methods)} name one twice")
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        unknown = sorted(set(self.hparams) - set(self.methods))
        if unknown:
            raise ValueError(f"hparams given for {unknown}, which the sweep does not run")
        for method, overrides in self.hparams.items():
            if not isinstance(overrides, dict):
                raise ValueError(f"hparams[{method!r}] must be an object of overrides, got {type(overrides).__name__}")
            valid = get_editor(method).hparams.__dataclass_fields__
            bad = sorted(set(overrides) - set(valid))
            if bad:
                raise ValueError(f"unknown {method} hyperparameter(s) {', '.join(map(repr, bad))}; valid: "
                                 f"{', '.join(sorted(valid))}")
        bad = sorted(set(self.trace) - set(DEFAULT_TRACE))
        if bad:
            raise ValueError(f"unknown trace settings {bad}; valid: {', '.join(DEFAULT_TRACE)}")
        self.trace = {**DEFAULT_TRACE, **self.trace}

    def layer_list(self, n_layers: int) -> list[int]:
        return parse_layers(self.layers, n_layers)

    def cells(self, n_layers: int) -> list[Cell]:
        """Every cell, in the order they are run: layer by layer, so partial sweeps cover every layer evenly."""
        layers = self.layer_list(n_layers)
        return [Cell(m, L, i, s) for m in self.methods for s in self.seeds
                for i in range(len(self.facts)) for L in layers]

    def settings(self, fingerprint: str, n_layers: int, resolved: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The sweep's identity, as stored: a re-run with other settings is refused."""
        return {
            "model": self.model, "fingerprint": fingerprint, "n_layers": n_layers,
            "facts": facts_digest(self.facts), "n_facts": len(self.facts),
            "methods": list(self.methods), "layers": self.layer_list(n_layers), "seeds": list(self.seeds),
            "window": self.window, "trace": dict(sorted(self.trace.items())), "fluency": self.fluency,
            "hparams": {m: {"overrides": self.hparams.get(m, {}), "resolved_hash": hparams_hash(resolved[m])}
                        for m in self.methods},
        }
