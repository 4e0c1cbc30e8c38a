"""Sequential editing that survives a restart, with a collapse monitor.

:func:`run_sequential` edits facts in batches with :class:`~knowscope.editing.memit.SequentialMEMIT`
(plain MEMIT or the null-space mode) and, after every batch, saves everything needed to continue
into its output folder (atomically: the edits so far, the null-space state, the monitor's records).
Called again with the same folder and the same settings it re-applies the saved edits and goes on
from the first unfinished batch; other settings are refused, so two runs never mix.

After every batch a :class:`CollapseMonitor` records the signals that show a model eroding under
many edits, and warns (optionally stops) when one crosses its threshold:

* ``update_norm`` — per edited weight, ‖W − W₀‖ / ‖W₀‖ (accumulated update relative to the original);
* ``efficacy_all`` / ``retention_first`` — share of all edits so far / of the first batch whose prompt
  prefers the new object (CounterFact's efficacy, mean-token probability of ``target_new`` > ``target_true``);
* ``neighborhood`` / ``locality`` — on a probe of facts that are never edited: CounterFact's
  neighbourhood score and EasyEdit's locality (top-1 tokens unchanged from the unedited model), both on
  prompts that no edit is meant to change (:func:`knowscope.editing.evaluation.evaluate`), and
  ``neighborhood_unedited``, the unedited model's score on those same prompts: as edits accumulate, more
  probe neighbours name an edited subject and leave the set, so the unedited score moves too and the
  neighbourhood threshold is read against it;
* ``probe_accuracy`` — top-1 accuracy on the probe facts themselves (knowledge that should not move);
* ``fluency`` — ROME's n-gram entropy of text generated from the probe's first prompts.

Batch 0 of the record is the unedited model, the reference for every "drop" threshold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from knowscope.editing.editors import LIFELONG_EDITORS, MEMORY_EDITORS, get_editor
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.memit import SequentialMEMIT
from knowscope.editing.memory import STATE_PREFIX
from knowscope.editing.scoring import generate_texts, generation_prompts, ngram_entropy, score_continuations
from knowscope.editing.session import MEMORY_PREFIX, EditResult, EditSession, unedited_weights
from knowscope.facts import Fact
from knowscope.knowledge import fact_accuracy
from knowscope.models import Model
from knowscope.results import ResultFormatError, load_dir, register, result_kind, save_dir

logger = logging.getLogger(__name__)

KIND = "sequential_run"


@dataclass(frozen=True)
class MonitorThresholds:
    """When a signal warns. Drops are measured from the unedited model (batch 0 of the record)."""

    update_norm: float = 0.5  # accumulated ‖ΔW‖ / ‖W₀‖ of any edited weight above this
    efficacy: float = 0.9  # efficacy over all edits so far below this
    retention: float = 0.9  # efficacy on the first batch below this
    neighborhood_drop: float = 0.10  # neighbourhood score more than this below the unedited model's
    locality: float = 0.7  # EasyEdit locality below this
    accuracy_drop: float = 0.10  # probe top-1 accuracy more than this below the unedited model's
    fluency_drop: float = 0.05  # fluency more than this fraction below the unedited model's

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0 <= value <= (10 if name == "update_norm" else 1):
                raise ValueError(f"threshold {name}={value} is out of range")


@dataclass
class CollapseMonitor:
    """Signals after each batch of a sequential run (see the module docstring), with warnings."""

    probe: list[Fact]
    thresholds: MonitorThresholds = field(default_factory=MonitorThresholds)
    fluency_prompts: int = 4
    stop_on_warning: bool = False

    def __post_init__(self) -> None:
        if not self.probe:
            raise ValueError("the monitor needs probe facts that are never edited (neighbourhood, locality, accuracy)")
        if self.fluency_prompts < 0:
            raise ValueError(f"fluency_prompts must be >= 0, got {self.fluency_prompts}")

    def settings(self) -> dict[str, Any]:
        return {"probe": [f.case_id if f.case_id is not None else f.subject for f in self.probe],
                "thresholds": asdict(self.thresholds), "fluency_prompts": self.fluency_prompts}

    def _fluency(self, model: Model) -> float | None:
        if not self.fluency_prompts:
            return None
        prompts = [generation_prompts(f, 1)[0] for f in self.probe[: self.fluency_prompts]]
        texts = generate_texts(model, prompts, max_out_len=100, top_k=5, seed=0)
        return sum(ngram_entropy(t) for t in texts) / len(texts)

    def measure(self, model: Model, edited: Sequence[Fact], first_batch: Sequence[Fact], reference: Any,
                update_norm: dict[str, float]) -> dict[str, Any]:
        """All signals of the model as it is now; ``reference``: the unedited model's probe predictions."""
        probe = evaluate(model, self.probe, reference=reference, fluency=False, generation=False, edited=edited)
        same = probe.neighborhood_score
        if edited:  # the prompts that name an edited subject under its relation are left out: score the rest unedited
            with unedited_weights(model):
                same = evaluate(model, self.probe, reference=reference, fluency=False, generation=False,
                                edited=edited).neighborhood_score
        wins = prefers_new(model, edited)  # the first batch is the start of ``edited``: scored once
        first = wins[: len(first_batch)]
        para, rephrase = paraphrase_scores(model, edited)
        return {
            "update_norm": update_norm,
            "efficacy_all": sum(wins) / len(wins) if wins else None,
            "retention_first": sum(first) / len(first) if first else None,
            "paraphrase": para,
            "rephrase_acc": rephrase,
            "neighborhood": probe.neighborhood_score,
            "neighborhood_unedited": same,
            "locality": probe.locality_acc,
            "probe_accuracy": fact_accuracy(model, self.probe).accuracy,
            "fluency": self._fluency(model),
        }

    def warnings(self, signals: dict[str, Any], base: dict[str, Any]) -> list[str]:
        """The thresholds ``signals`` cross, compared with ``base`` (the unedited model's signals)."""
        t, out = self.thresholds, []
        for name, value in (signals.get("update_norm") or {}).items():
            if value > t.update_norm:
                out.append(f"update of {name} is {value:.2f} of the weight's norm (> {t.update_norm})")

        def below(key: str, limit: float | None, label: str) -> None:
            v = signals.get(key)
            if v is not None and limit is not None and v < limit:
                out.append(f"{label} {v:.3f} < {limit:.3f}")

        below("efficacy_all", t.efficacy, "efficacy over all edits")
        below("retention_first", t.retention, "retention of the first batch")
        below("locality", t.locality, "locality")
        ref = signals.get("neighborhood_unedited", base.get("neighborhood"))  # the same prompts, unedited
        if ref is not None:
            below("neighborhood", ref - t.neighborhood_drop, "neighbourhood score")
        if base.get("probe_accuracy") is not None:
            below("probe_accuracy", base["probe_accuracy"] - t.accuracy_drop, "probe accuracy")
        if base.get("fluency") is not None:
            below("fluency", base["fluency"] * (1 - t.fluency_drop), "fluency")
        return out


def prefers_new(model: Model, facts: Sequence[Fact]) -> list[bool]:
    """Per fact: does its rewrite prompt prefer ``target_new`` (mean-token probability, as CounterFact)?"""
    pairs = [(f.text, c) for f in facts for c in (f.new_continuation, f.true_continuation)]
    scored = score_continuations(model, pairs)
    return [scored[2 * i].prob > scored[2 * i + 1].prob for i in range(len(facts))]


def paraphrase_scores(model: Model, facts: Sequence[Fact]) -> tuple[float | None, float | None]:
    """CounterFact's paraphrase score and EasyEdit's rephrase accuracy over ``facts``' paraphrase prompts
    (each fact's prompts averaged first, then the facts, as :func:`~knowscope.editing.evaluation.evaluate`)."""
    per_fact = [[(p, f.new_continuation, f.true_continuation) for p in f.paraphrase_prompts] for f in facts]
    pairs = [(p, c) for rows in per_fact for p, new, true in rows for c in (new, true)]
    if not pairs:
        return None, None
    scored = iter(score_continuations(model, pairs))
    scores, accs = [], []
    for rows in per_fact:
        if not rows:
            continue
        got = [(next(scored), next(scored)) for _ in rows]
        scores.append(sum(n.prob > t.prob for n, t in got) / len(got))
        accs.append(sum(n.token_acc for n, _ in got) / len(got))
    return sum(scores) / len(scores), sum(accs) / len(accs)


def efficacy(model: Model, facts: Sequence[Fact]) -> float:
    """Share of ``facts`` whose rewrite prompt prefers ``target_new`` (CounterFact's efficacy score)."""
    wins = prefers_new(model, facts)
    return sum(wins) / len(wins)


@dataclass
class SequentialRun:
    """A finished (or stopped) sequential run: one record per batch, batch 0 = the unedited model."""

    settings: dict[str, Any]
    records: list[dict[str, Any]]
    path: Path | None = None

    @property
    def stopped(self) -> bool:
        return bool(self.records and self.records[-1].get("stopped"))

    def curve(self, signal: str) -> list[tuple[int, Any]]:
        """``(edits so far, value)`` per batch for one signal (``update_norm`` gives the largest layer's)."""
        out = []
        for r in self.records:
            v = r["signals"].get(signal)
            if isinstance(v, dict):
                v = max(v.values()) if v else 0.0
            out.append((r["edits"], v))
        return out

    def figure(self) -> Any:
        """Every signal against the number of edits (one panel, warnings marked)."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for signal in ("efficacy_all", "retention_first", "neighborhood", "locality", "probe_accuracy",
                       "update_norm"):
            pts = [(x, y) for x, y in self.curve(signal) if y is not None]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                         name=signal))
        flu = [(x, y) for x, y in self.curve("fluency") if y is not None]
        if flu:
            base = flu[0][1] or 1.0
            fig.add_trace(go.Scatter(x=[p[0] for p in flu], y=[p[1] / base for p in flu], mode="lines+markers",
                                     name="fluency / unedited"))
        for r in self.records:
            if r.get("warnings"):
                fig.add_vline(x=r["edits"], line={"color": "#d62728", "dash": "dot", "width": 1})
        fig.update_layout(title=f"Sequential {self.settings.get('method', '')}: signals vs edits "
                                f"(red lines: warnings)", xaxis_title="edits", yaxis_title="value",
                          template="plotly_white", height=420)
        return fig

    @classmethod
    def load(cls, path: str | Path) -> SequentialRun:
        meta, _ = _load_state(Path(path))
        return cls(settings=meta["settings"], records=meta["records"], path=Path(path))


STATE = "state"


def _facts_hash(facts: Sequence[Fact]) -> str:
    ids = [f.case_id if f.case_id is not None else f"{f.subject}|{f.target_new}" for f in facts]
    return hashlib.blake2b(json.dumps(ids, default=str).encode(), digest_size=8).hexdigest()


def _settings(model: Model, facts: Sequence[Fact], batch_size: int, method: str, hp: Any,
              monitor: CollapseMonitor | None) -> dict[str, Any]:
    return {"fingerprint": model.fingerprint, "model_name": model.name,
            "method": method, "batch_size": int(batch_size),
            "facts": _facts_hash(facts), "n_facts": len(facts), "hparams": hp.to_dict(),
            "monitor": monitor.settings() if monitor is not None else None}


def _save_state(out: Path, settings: dict[str, Any], records: list[dict[str, Any]], session: EditSession,
                seq: SequentialMEMIT | None) -> None:
    """Weight edits: every edit so far (and MEMIT's running key sums). Memory edits: the side memory's
    full state as one checkpoint edit (a memory run's history would be hundreds of small edits)."""
    arrays: dict[str, Tensor] = {}
    metas = []
    memory = session.memory
    if memory is not None:
        last = session.history[-1]
        checkpoint = EditResult(method=last.method, deltas={}, fingerprint=last.fingerprint, layers=last.layers,
                                hparams=last.hparams, model_name=last.model_name,
                                extra={"memory": last.extra["memory"], "checkpoint_of_edits": memory.n_edits},
                                memory=memory.checkpoint())
        history = [checkpoint]
    else:
        history = session.history
    for i, result in enumerate(history):
        metas.append(result.meta())
        arrays.update({f"edit/{i}/{name}": d.contiguous() for name, d in result.arrays().items()})
    meta: dict[str, Any] = {"settings": settings, "records": records, "edits": metas}
    if seq is not None:
        arrays.update({f"kpkp/{layer}": m.contiguous() for layer, m in seq.KpKp.items()})
        meta["seq"] = {"layers": seq.layers, "n_batches": seq.n_batches, "n_edits": seq.n_edits}
    save_dir(out / STATE, KIND, meta, arrays, overwrite=True)


def _rebase(session: EditSession) -> None:
    """A lifelong weight run's edits so far replaced by one checkpoint edit (their summed change, carrying the
    last edit's state), applied to the original weights: the run goes on from exactly the weights a resumed
    run restores (one delta per weight, not hundreds)."""
    history = session.history
    if not history:
        return
    last = history[-1]
    n = sum(int(r.extra.get("checkpoint_of_edits", 1)) for r in history)
    checkpoint = EditResult(method=last.method, deltas=session.checkpoint_deltas(), fingerprint=last.fingerprint,
                            layers=last.layers, hparams=last.hparams, model_name=last.model_name,
                            extra={**last.extra, "checkpoint_of_edits": n})
    session.rollback()
    session.apply(checkpoint)


def _load_state(out: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A run's saved state, refused unless its records, edits and arrays agree (besides the arrays'
    checksum, which :func:`load_dir` checks): every edit's arrays are stored, nothing else is, and the
    last record's batch and edit counts are what the edits hold."""
    meta, arrays = load_dir(out / STATE, KIND)
    where = out / STATE
    edits, records = meta.get("edits"), meta.get("records")
    if not isinstance(edits, list) or not isinstance(records, list) or not records \
            or not all(isinstance(m, dict) for m in edits) or not isinstance(records[-1], dict):
        raise ResultFormatError(f"{where}: a sequential run's meta.json needs 'edits' and 'records' lists")
    stored: dict[str, dict[str, list[int]]] = {}
    for name, v in arrays.items():
        if name.startswith("edit/"):
            index, _, rest = name[len("edit/"):].partition("/")
            stored.setdefault(index, {})[rest] = list(v.shape)
    declared = {str(i): {**m.get("parameters", {}), **{MEMORY_PREFIX + k: s for k, s in
                                                       m.get("memory_arrays", {}).items()}}
                for i, m in enumerate(edits)}
    if stored != {i: d for i, d in declared.items() if d}:
        raise ResultFormatError(f"{where}: its arrays do not match the {len(edits)} edit(s) its meta.json records: "
                                "the run was changed or corrupted")
    batch, n_edits = records[-1].get("batch"), records[-1].get("edits")
    memory = bool(edits) and "memory" in (edits[0].get("extra") or {})
    if memory:
        counter = arrays.get(f"edit/0/{MEMORY_PREFIX}{STATE_PREFIX}n_edits")
        ok = len(edits) == 1 and counter is not None and int(counter.reshape(-1)[0]) == batch
    elif edits and "checkpoint_of_edits" in (edits[0].get("extra") or {}):  # a lifelong weight run's checkpoint
        ok = len(edits) == 1 and edits[0]["extra"]["checkpoint_of_edits"] == batch
    else:
        ok = len(edits) == batch and sum(len(m.get("requests", [])) for m in edits) == n_edits
    if not ok:
        raise ResultFormatError(f"{where}: its records end after batch {batch} ({n_edits} edits), but it holds "
                                f"{len(edits)} saved edit(s) that disagree: the run was changed or corrupted")
    return meta, arrays


def _extends(saved: dict[str, Any], settings: dict[str, Any], facts: Sequence[Fact]) -> bool:
    """Do ``settings`` continue the saved run with more facts: everything else equal, and the saved run's
    facts the first ones of ``facts``, in order, in whole batches (a partial last batch would shift the rest)?"""
    rest = {"facts", "n_facts"}
    if {k: v for k, v in saved.items() if k not in rest} != {k: v for k, v in settings.items() if k not in rest}:
        return False
    n = int(saved.get("n_facts", 0))
    return (n < len(facts) and n % int(settings["batch_size"]) == 0
            and _facts_hash(facts[:n]) == saved.get("facts"))


def _restore(out: Path, model: Model, settings: dict[str, Any], session: EditSession,
             seq: SequentialMEMIT | None, facts: Sequence[Fact]) -> list[dict[str, Any]]:
    meta, arrays = _load_state(out)
    if meta["settings"] != settings and _extends(meta["settings"], settings, facts):
        logger.warning("%s: continuing a run of %d facts with %d more (its facts come first, in the same order)",
                       out, meta["settings"]["n_facts"], len(facts) - meta["settings"]["n_facts"])
    elif meta["settings"] != settings:
        diff = sorted(k for k in set(meta["settings"]) | set(settings) if meta["settings"].get(k) != settings.get(k))
        raise ValueError(f"{out} holds a sequential run with other settings ({', '.join(diff)} differ); give "
                         "another output folder, or the same settings to continue it")
    for result in _edits(meta, arrays):
        session.apply(result)
    if seq is not None:
        s = meta["seq"]
        seq._setup([])  # statistics and projectors, as at the start
        seq.layers, seq.n_batches, seq.n_edits = s["layers"], s["n_batches"], s["n_edits"]
        for layer in seq.layers:  # absent when the run stopped before its first batch
            if f"kpkp/{layer}" in arrays:
                seq.KpKp[layer] = arrays[f"kpkp/{layer}"].double()
    return list(meta["records"])


def run_sequential(model: Model, facts: Sequence[Fact], batch_size: int, out: str | Path, *, null_space: bool = True,
                   hparams: Any = None, monitor: CollapseMonitor | None = None,
                   stats: Any = None, max_batches: int | None = None, method: str = "memit",
                   save_every: int = 1) -> SequentialRun:
    """Edit ``facts`` in batches of ``batch_size``, saving after every batch into ``out``; resumable.

    ``method``: ``"memit"`` (:class:`SequentialMEMIT`, plain or ``null_space``), a memory editor
    (``"grace"``, ``"wise"``; ``hparams`` of that editor), whose edits pile up in one side memory, or a
    lifelong weight editor (``"ultraedit"``), whose edits so far become one checkpoint edit (their summed
    change, carrying the editor's state) at every record: the run continues from it, as a resumed run does.
    ``monitor`` records the collapse signals after every ``save_every`` batches (and batch 0,
    unedited), and the run is saved then; with ``stop_on_warning`` the run stops after the first
    record that warns. ``max_batches`` stops after that many batches in this call (the next call
    continues from the last saved record; a longer ``facts`` whose first facts are the saved run's, in order,
    continues it with the rest). The model is left unedited when the call returns; the
    edits stay in ``out`` (:func:`load_run_edits`).
    """
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to edit")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if monitor is not None:
        probe_subjects = {f.subject for f in monitor.probe}
        overlap = sorted(probe_subjects & {f.subject for f in facts})
        if overlap:
            raise ValueError(f"the monitor's probe facts must never be edited; {len(overlap)} subjects are in both "
                             f"(e.g. {overlap[0]!r})")
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    editor = get_editor(method)
    if editor.name == "memit":
        hp = hparams or MEMITHyperParams.for_model(model)
        seq: SequentialMEMIT | None = SequentialMEMIT(model, hparams=hp, null_space=null_space, stats=stats)
        label = "memit-null-space" if null_space else "memit"

        def edit(batch: list[Fact]) -> EditResult:
            return seq.edit(batch)
    elif editor.memory or editor.lifelong:
        hp = hparams or editor.hparams.for_model(model)
        seq, label = None, editor.name

        def edit(batch: list[Fact]) -> EditResult:
            return editor(model, batch, hparams=hp)
    else:
        raise ValueError(f"sequential runs take memit, a memory editor ({', '.join(MEMORY_EDITORS)}) or a "
                         f"lifelong weight editor ({', '.join(LIFELONG_EDITORS)}); not {method!r}")
    out = Path(out)
    settings = _settings(model, facts, batch_size, label, hp, monitor)
    if save_every != 1:
        settings["save_every"] = int(save_every)
    session = EditSession(model)
    try:
        if result_kind(out / STATE) == KIND:
            records = _restore(out, model, settings, session, seq, facts)
            logger.info("resuming %s after batch %d", out, len(records) - 1)
        else:
            if out.exists() and any(out.iterdir()):
                raise ValueError(f"{out} is not empty and holds no sequential run; give an empty or new folder")
            out.mkdir(parents=True, exist_ok=True)
            records = []
        reference = (pre_edit_predictions(model, monitor.probe, session=session, generation=False)
                     if monitor is not None else None)
        names: list[str] = []
        originals: dict[str, Tensor] = {}

        def norms() -> dict[str, float]:
            if not names:
                with session.unedited():
                    weights = [model.arch.mlp_out_name(layer) for layer in (seq.layers or [] if seq else [])]
                    for name in weights or (session.touched if editor.lifelong else []):
                        names.append(name)
                        originals[name] = model.parameter(name).detach().clone()
            return {n: float((model.parameter(n).detach() - originals[n]).norm() / originals[n].norm())
                    for n in names}

        if not records:
            signals = monitor.measure(model, [], [], reference, {}) if monitor is not None else {}
            records.append({"batch": 0, "edits": 0, "seconds": 0.0, "signals": signals, "warnings": []})
            _save_state(out, settings, records, session, seq)
        batches = [facts[b:b + batch_size] for b in range(0, len(facts), batch_size)]
        done_here = 0
        index = records[-1]["batch"]
        seconds = 0.0
        while index < len(batches):
            if records[-1].get("stopped") or (max_batches is not None and done_here >= max_batches):
                break
            t = time.perf_counter()
            try:
                session.apply(edit(batches[index]))
            except ValueError as exc:  # say where the run stopped: the saved records end before this batch
                first = batches[index][0]
                raise ValueError(f"sequential run stopped at batch {index + 1} (edits from {index * batch_size + 1}, "
                                 f"{first.subject!r}; saved up to {records[-1]['edits']} edits): {exc}") from exc
            seconds += time.perf_counter() - t
            index += 1
            done_here += 1
            if index % save_every and index < len(batches):
                continue
            if editor.lifelong:
                _rebase(session)
            edited = [f for b in batches[:index] for f in b]
            first = [f for b in batches[:save_every] for f in b]  # the edits of the first record
            signals = monitor.measure(model, edited, first, reference, norms()) if monitor is not None \
                else {"update_norm": norms(), "efficacy_all": efficacy(model, edited)}
            warn = monitor.warnings(signals, records[0]["signals"]) if monitor is not None else []
            for w in warn:
                logger.warning("sequential run, after %d edits: %s", len(edited), w)
            rec = {"batch": index, "edits": len(edited), "seconds": seconds, "signals": signals,
                   "warnings": warn, "stopped": bool(warn and monitor is not None and monitor.stop_on_warning)}
            records.append(rec)
            _save_state(out, settings, records, session, seq)
            seconds = 0.0
    finally:
        session.rollback()
    return SequentialRun(settings=settings, records=records, path=out)


def load_run_edits(out: str | Path) -> list[EditResult]:
    """The edits of a saved sequential run, one per finished batch, in order (apply them to an EditSession)."""
    return _edits(*_load_state(Path(out)))


def _edits(meta: dict[str, Any], arrays: dict[str, Tensor]) -> list[EditResult]:
    return [EditResult._from(m, {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(f"edit/{i}/")})
            for i, m in enumerate(meta["edits"])]


def _headline(m: dict[str, Any]) -> str:
    s, recs = m.get("settings", {}), m.get("records", [])
    last = recs[-1] if recs else {}
    return f"{s.get('method')} on {s.get('model_name')}: {last.get('edits', 0)} of {s.get('n_facts')} edits"


register(KIND, lambda p: SequentialRun.load(Path(p).parent), _headline)

__all__ = ["CollapseMonitor", "MonitorThresholds", "SequentialRun", "efficacy", "load_run_edits", "run_sequential"]
