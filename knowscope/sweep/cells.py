"""The work of one sweep worker: load the model once, then trace facts and run cells on request.

A :class:`CellRunner` is what a Ray actor holds (one per worker) and what the in-process run uses:
the same code either way, so the two give the same rows. A cell edits one fact at one layer with
the method's editor, evaluates it with :func:`knowscope.editing.evaluation` (CounterFact and EasyEdit
metrics, neighbourhood and locality on prompts about other subjects, locality against the unedited
model's predictions) and undoes the edit; the row also carries Hase et al.'s rewrite score
``(p_new after − p_new before) / (1 − p_new before)``, the share of the missing probability the
edit supplied.

Key statistics are computed once per layer (:meth:`CellRunner.prepare_stats`, one worker) and
handed to every worker (:meth:`CellRunner.set_stats`), never recomputed per cell.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

import torch

from knowscope.circuits import trace
from knowscope.editing import EditSession
from knowscope.editing.editors import get_editor
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.stats import KeyStats, key_stats
from knowscope.facts import Fact
from knowscope.models import Model, load_model
from knowscope.sweep.grid import TRACE_KINDS, Cell, edited_layers, fact_id, hparams_hash
from knowscope.texts import source_key

logger = logging.getLogger(__name__)


class CellRunner:
    """A worker: the model (loaded once), its key statistics, and the unedited model's reference numbers.

    Args:
        model: a loaded :class:`Model`, or a name for :func:`load_model` (what a Ray actor gets).
        facts: the sweep's facts (a cell names one by index).
        hparams: per-method overrides of the defaults (``SweepSpec.hparams``).
        window, trace_settings, fluency: as in :class:`~knowscope.sweep.grid.SweepSpec`.
        threads: torch CPU threads for this worker (``None``: leave as is).
        name: the worker's name in the rows it returns.
    """

    def __init__(self, model: Model | str, facts: list[Fact], hparams: dict[str, dict[str, Any]] | None = None,
                 window: int = 5, trace_settings: dict[str, Any] | None = None, fluency: bool = False,
                 device: str = "cpu", threads: int | None = None, name: str | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.model = model if isinstance(model, Model) else load_model(model, device=device)
        self.facts = list(facts)
        self.overrides = dict(hparams or {})
        self.window = int(window)
        self.trace_settings = dict(trace_settings or {})
        self.fluency = bool(fluency)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.session = EditSession(self.model)
        self.stats: dict[tuple[int, str], dict[int, KeyStats]] = {}  # (tokens, source) -> layer -> stats
        self._reference: dict[int, Any] = {}
        self._p_new_pre: dict[int, float] = {}

    # ------------------------------------------------------------------ setup
    def hparams(self, method: str, seed: int = 0) -> Any:
        editor = get_editor(method)
        overrides = dict(self.overrides.get(method, {}))
        if "seed" in editor.hparams.__dataclass_fields__:
            overrides["seed"] = seed
        return editor.hparams.for_model(self.model, **overrides)

    def describe(self) -> dict[str, Any]:
        """What the driver checks and stores: fingerprint, layer count, resolved hyperparameters."""
        resolved = {}
        for method in ("rome", "memit", "ft"):
            d = self.hparams(method).to_dict()
            d.pop("seed", None)  # varies per cell
            resolved[method] = d
        return {"fingerprint": self.model.fingerprint, "n_layers": self.model.arch.n_layers,
                "resolved": resolved, "worker": self.name, "pid": os.getpid()}

    def prepare_stats(self, layers: list[int], n_tokens: int, source: str,
                      progress: bool = False) -> dict[int, KeyStats]:
        """The key statistics of ``layers`` (one streamed pass; read from the cache where present)."""
        got = key_stats(self.model, sorted(set(layers)), n_tokens=n_tokens, source=source, progress=progress)
        self.set_stats(got)
        return got

    def set_stats(self, stats: dict[int, KeyStats]) -> bool:
        for layer, st in stats.items():
            if st.fingerprint != self.model.fingerprint:
                raise ValueError(f"key statistics for layer {layer} come from another model")
            self.stats.setdefault((st.n_tokens, st.source), {})[st.layer] = st
        return True

    def _stats_for(self, hp: Any, layers: list[int]) -> dict[int, KeyStats] | None:
        """Prepared statistics for all ``layers`` with ``hp``'s settings; ``None`` lets the editor read its cache."""
        if not hasattr(hp, "stats_tokens"):
            return None
        have = self.stats.get((int(hp.stats_tokens), source_key(hp.stats_source)), {})
        return {L: have[L] for L in layers} if all(L in have for L in layers) else None

    # ------------------------------------------------------------------ work
    def run_trace(self, index: int) -> dict[str, Any]:
        """Tracing effect per layer at the fact's last subject token, for hidden, mlp and attn."""
        fact = self.facts[index]
        t0 = time.perf_counter()
        s = self.trace_settings
        tr = trace(self.model, fact.text, fact.subject, target=fact.true_continuation, kinds=TRACE_KINDS,
                   samples=int(s.get("samples", 10)), noise=float(s.get("noise", 3.0)),
                   window=int(s.get("window", 10)), seed=int(s.get("seed", 0)), tokens="last_subject")
        pos = tr.subject_range[1] - 1
        effects = {k: [_finite(v) for v in tr.indirect_effect(k)[pos].tolist()] for k in TRACE_KINDS}
        return {"fact": index, "effects": effects, "high": tr.high_score, "low": tr.low_score, "position": pos,
                "seconds": time.perf_counter() - t0, "worker": self.name}

    def _unedited(self, index: int) -> tuple[Any, float]:
        if index not in self._reference:
            fact = self.facts[index]
            self._reference[index] = pre_edit_predictions(self.model, [fact], session=self.session, generation=False)
            with self.session.unedited():
                self._p_new_pre[index] = float(evaluate(self.model, [fact], fluency=False, generation=False)
                                               .per_fact[0]["p_new"])
        return self._reference[index], self._p_new_pre[index]

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Edit, evaluate, undo; the row the store keeps for ``cell``."""
        if self.session.history:
            raise RuntimeError("the worker's model carries edits; a cell must start from the unedited model")
        t0 = time.perf_counter()
        fact = self.facts[cell.fact]
        reference, p_pre = self._unedited(cell.fact)
        editor = get_editor(cell.method)
        layers = edited_layers(cell.method, cell.layer, self.window, self.model.arch.n_layers)
        hp = self.hparams(cell.method, cell.seed)
        stats = self._stats_for(hp, layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cell.seed)
            t1 = time.perf_counter()
            result = editor(self.model, [fact], layers=layers if editor.layer_window else layers[0],
                            hparams=hp, stats=stats)
            edit_seconds = time.perf_counter() - t1
            with self.session.temporary(result):
                m = evaluate(self.model, [fact], reference=reference, fluency=self.fluency, generation=False)
        row = dict(m.per_fact[0])
        p_new = float(row["p_new"])
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) or v is None}
        metrics["p_new_pre"] = p_pre
        metrics["rewrite_score"] = (p_new - p_pre) / (1.0 - p_pre) if p_pre < 1.0 else None
        metrics["update_norm"] = math.sqrt(sum(float(d.double().norm()) ** 2 for d in result.deltas.values()))
        return {"cell_id": cell.id, "fact": cell.fact, "fact_id": fact_id(fact, cell.fact), "method": cell.method,
                "layer": cell.layer, "layers": layers, "seed": cell.seed, "fingerprint": self.model.fingerprint,
                "hparams_hash": hparams_hash({k: v for k, v in hp.to_dict().items() if k != "seed"}),
                "metrics": metrics, "seconds": time.perf_counter() - t0, "edit_seconds": edit_seconds,
                "worker": self.name}

    def run(self, job: tuple[str, Any]) -> dict[str, Any]:
        """One job of the driver's queue: ``("trace", fact index)`` or ``("cell", Cell)``."""
        kind, what = job
        return self.run_trace(what) if kind == "trace" else self.run_cell(what)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
