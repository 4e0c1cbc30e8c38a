"""Edit evaluation under the two protocols of the literature, each labelled as such.

**CounterFact protocol** (ROME / MEMIT papers). A continuation's probability is taken over all of its
tokens, as ROME does: ``P(c | prompt) = exp(-mean token NLL of c)``, with ``c = " " + target``.

* ``efficacy_score``: share of rewrite prompts where ``P(new) > P(true)``;
  ``efficacy_magnitude``: mean of ``P(new) - P(true)`` over the same prompts;
* ``paraphrase_score`` / ``paraphrase_magnitude``: the same over the paraphrase prompts;
* ``neighborhood_score``: share of neighbourhood prompts (other subjects that share the true object)
  where ``P(true) > P(new)``, i.e. the reverse; ``neighborhood_magnitude``: mean ``P(true) - P(new)``;
* ``fluency``: ROME's generation entropy, the weighted mean ``(2/3 H2 + 4/3 H3) / 2`` of the bigram
  and trigram entropies (bits) of generated text, generated as ROME does (top-5 sampling, seeded,
  prompt + continuation up to ``max_out_len`` tokens), averaged over generations.

Scores are averaged over each fact's prompts first, then over facts (ROME's per-case averaging).

**EasyEdit protocol** (teacher-forced token accuracies):

* ``rewrite_acc``: share of ``target_new`` tokens that are the argmax prediction after the rewrite
  prompt and the previous target tokens; ``rephrase_acc``: the same after each paraphrase;
* ``locality_acc``: share of tokens of each locality prompt's answer (``fact.locality``, else the
  neighbourhood prompts with ``target_true``) where the edited model's argmax equals the
  **unedited** model's argmax (EasyEdit's definition: compared with the pre-edit model's own
  predictions, never with the ground truth);
* ``portability_acc``: token accuracy of each portability pair's answer, when facts have them.

**Routing.** When the model carries a side memory (GRACE, WISE), each fact's row gets ``routing``: for
its rewrite, paraphrase and neighbourhood prompts, which memory answered, the routing score and the
threshold (:meth:`knowscope.editing.memory.SideMemory.route`); ``notes["routing"]`` holds the share of
each kind routed to the side memory.

**Specificity only where nothing was edited.** In a batch or a sequential run many neighbourhood
prompts name a subject that is itself edited; such a prompt is supposed to change, so counting it
measures the edits, not the damage. ``neighborhood_score`` / ``neighborhood_magnitude`` /
``locality_acc`` are therefore taken over the prompts that name no edited subject (word-boundary
match; the edited subjects are the evaluated facts', the session's edits' and any passed as
``edited_subjects``); the figures over every prompt are kept as ``neighborhood_score_all``,
``neighborhood_magnitude_all`` and ``locality_acc_all``, and ``notes["specificity_prompts"]`` says how
many prompts each kept and dropped.

Locality is always measured against the unedited model: pass the :class:`EditSession` (its
``unedited()`` lends the original weights) or a :class:`PreEditPredictions` taken before any edit
(:func:`pre_edit_predictions`), which also serves sequential editing where many edits pile up.

All forward passes are batched: sequences are right-padded, which is exact for causal models because
logits are read only at each row's real positions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from knowscope.editing.memory import SideMemory, memory_of, routing_figure
from knowscope.editing.predictions import PredictionTable, prediction_table  # noqa: F401 - part of this module's API
from knowscope.editing.scoring import (  # noqa: F401 - part of this module's API
    TokenScores,
    _pair_ids,
    _score_ids,
    generate_texts,
    generation_prompts,
    ngram_entropy,
    score_continuations,
    word_tokenize,
)
from knowscope.editing.session import EditResult, EditSession
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.results import fmt, load_dir, register, save_dir

logger = logging.getLogger(__name__)

CF_KEYS = (
    "efficacy_score",
    "efficacy_magnitude",
    "paraphrase_score",
    "paraphrase_magnitude",
    "neighborhood_score",
    "neighborhood_magnitude",
    "fluency",
)
EE_KEYS = ("rewrite_acc", "rephrase_acc", "locality_acc", "portability_acc")
# specificity over every neighbourhood / locality prompt, including those about edited subjects
UNFILTERED_KEYS = ("neighborhood_score_all", "neighborhood_magnitude_all", "locality_acc_all")


# --------------------------------------------------------------------------------------------------
# what each fact is evaluated on


def locality_pairs(fact: Fact) -> list[tuple[str, str]]:
    """EasyEdit locality pairs of a fact: its ``locality`` list, else neighbourhood prompts + true target."""
    if fact.locality:
        return [(p, Fact.continuation(a)) for p, a in fact.locality]
    return [(p, fact.true_continuation) for p in fact.neighborhood_prompts]


def _fact_pairs(fact: Fact, kind: str) -> list[tuple[str, str]]:
    new, true = fact.new_continuation, fact.true_continuation
    if kind == "rewrite":
        return [(fact.text, new), (fact.text, true)]
    if kind == "paraphrase":
        return [(p, c) for p in fact.paraphrase_prompts for c in (new, true)]
    if kind == "neighborhood":
        return [(p, c) for p in fact.neighborhood_prompts for c in (new, true)]
    if kind == "locality":
        return locality_pairs(fact)
    if kind == "portability":
        return [(p, Fact.continuation(a)) for p, a in fact.portability]
    raise ValueError(f"unknown prompt kind {kind!r}")


_KINDS = ("rewrite", "paraphrase", "neighborhood", "locality", "portability")


# --------------------------------------------------------------------------------------------------
# pre-edit predictions (the locality reference)


@dataclass
class PreEditPredictions:
    """The unedited model's argmax tokens on every locality pair of some facts.

    Take it with :func:`pre_edit_predictions` before editing; pass it to :func:`evaluate` after any
    number of edits (sequential editing) so locality is always compared with the unedited model.
    """

    fingerprint: str
    argmax: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = field(default_factory=dict)

    def lookup(self, key: tuple[tuple[int, ...], tuple[int, ...]]) -> list[int]:
        if key not in self.argmax:
            raise ValueError(
                "the pre-edit predictions do not cover a locality prompt of these facts; take them with "
                "pre_edit_predictions(model, facts) on the same facts before editing"
            )
        return self.argmax[key]


def pre_edit_predictions(
    model: Model, facts: Sequence[Fact], session: EditSession | None = None, batch_size: int = 32
) -> PreEditPredictions:
    """The unedited model's predictions on the facts' locality pairs.

    With a ``session`` the original weights are lent for the computation (any edits come back after),
    so this is correct even when edits are already applied. Without one, ``model`` must be unedited.
    """
    pairs = [pair for fact in facts for pair in locality_pairs(fact)]
    encoded = list(dict.fromkeys(_pair_ids(model, p, c) for p, c in pairs))
    if session is not None:
        with session.unedited():
            scored = _score_ids(model, encoded, batch_size)
    else:
        scored = _score_ids(model, encoded, batch_size)
    return PreEditPredictions(model.fingerprint, {k: v.argmax.tolist() for k, v in scored.items()})


# --------------------------------------------------------------------------------------------------
# metrics


@dataclass
class EditMetrics:
    """CounterFact and EasyEdit metrics of an edited model on some facts (``None`` = not measured).

    ``per_fact`` holds each fact's own values (same keys) and, for the rewrite prompt, ``p_new`` and
    ``p_true``. ``notes`` says how the numbers were obtained (locality reference, fluency settings).
    """

    n_facts: int
    efficacy_score: float
    efficacy_magnitude: float
    paraphrase_score: float | None
    paraphrase_magnitude: float | None
    neighborhood_score: float | None
    neighborhood_magnitude: float | None
    fluency: float | None
    rewrite_acc: float
    rephrase_acc: float | None
    locality_acc: float | None
    portability_acc: float | None
    per_fact: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    neighborhood_score_all: float | None = None
    neighborhood_magnitude_all: float | None = None
    locality_acc_all: float | None = None

    def counterfact(self) -> dict[str, float | None]:
        """The CounterFact-protocol metrics (ROME/MEMIT papers)."""
        return {k: getattr(self, k) for k in CF_KEYS}

    def easyedit(self) -> dict[str, float | None]:
        """The EasyEdit-protocol metrics (token accuracies)."""
        return {k: getattr(self, k) for k in EE_KEYS}

    def unfiltered(self) -> dict[str, float | None]:
        """Specificity over every neighbourhood / locality prompt, those about edited subjects included."""
        return {k: getattr(self, k) for k in UNFILTERED_KEYS}

    def flat(self) -> dict[str, float | None]:
        """All metrics in one flat dict (the CLI's ``metrics`` field)."""
        return {**self.counterfact(), **self.easyedit(), **self.unfiltered()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_facts": self.n_facts,
            "counterfact": self.counterfact(),
            "easyedit": self.easyedit(),
            "unfiltered": self.unfiltered(),
            "notes": self.notes,
            "per_fact": self.per_fact,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditMetrics:
        return cls(
            n_facts=int(d["n_facts"]),
            **{k: d["counterfact"].get(k) for k in CF_KEYS},
            **{k: d["easyedit"].get(k) for k in EE_KEYS},
            per_fact=list(d.get("per_fact", [])),
            notes=dict(d.get("notes", {})),
            **{k: (d.get("unfiltered") or {}).get(k) for k in UNFILTERED_KEYS},
        )

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], notes: dict[str, Any] | None = None) -> EditMetrics:
        """Aggregate per-fact rows (as in ``per_fact``): each metric is the mean over the facts that have it.

        This is how per-fact evaluations (one edit per fact, undone in between) combine into one result.
        """
        rows = list(rows)
        if not rows:
            raise ValueError("no per-fact rows to aggregate")

        def agg(key: str) -> float | None:
            return _mean(r[key] for r in rows if r.get(key) is not None)

        return cls(
            n_facts=len(rows),
            **{k: agg(k) for k in CF_KEYS},
            **{k: agg(k) for k in EE_KEYS},
            per_fact=rows,
            notes=dict(notes or {}),
            **{k: agg(k) for k in UNFILTERED_KEYS},
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the metrics as ``meta.json`` in directory ``path`` (no arrays)."""
        return save_dir(path, "edit_metrics", self.to_dict(), {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EditMetrics:
        meta, _ = load_dir(path, "edit_metrics")
        return cls.from_dict(meta)

    def figure(self) -> Any:
        """Bar chart of both protocols' metrics in [0, 1] (fluency, in bits, is in the title)."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for label, values in (("CounterFact", self.counterfact()), ("EasyEdit", self.easyedit())):
            keys = [k for k, v in values.items() if v is not None and k != "fluency"]
            fig.add_bar(name=label, x=keys, y=[values[k] for k in keys])
        fluency = f", fluency {self.fluency:.2f} bits" if self.fluency is not None else ""
        fig.update_layout(
            title=f"Edit metrics on {self.n_facts} facts{fluency}", yaxis_title="score", yaxis_range=[-1, 1]
        )
        return fig

    def routing(self) -> list[dict[str, Any]]:
        """Per prompt, how a side memory routed it (fact, kind, prompt, memory, score, threshold, routed);
        empty when no side memory was attached."""
        return [{"case_id": row.get("case_id"), "subject": row.get("subject"), "kind": kind, **r}
                for row in self.per_fact for kind, routes in (row.get("routing") or {}).items() for r in routes]

    def routing_figure(self) -> Any:
        """Routing margins of the edited, paraphrase and neighbour prompts (None without a side memory;
        :func:`knowscope.editing.memory.routing_figure`)."""
        rows = self.routing()
        return routing_figure(rows, (self.notes.get("routing") or {}).get("memory", "")) if rows else None

    def summary(self) -> str:
        """One line per protocol, for printing."""
        def fmt(d: dict[str, float | None]) -> str:
            return "  ".join(f"{k}={v:.3f}" for k, v in d.items() if v is not None)

        return f"CounterFact: {fmt(self.counterfact())}\nEasyEdit:    {fmt(self.easyedit())}"


def _subject_matcher(subjects: Iterable[str]) -> Any:
    """A predicate: does a prompt name any of ``subjects`` (as a whole word / phrase)?"""
    subs = sorted({s.strip() for s in subjects if s and s.strip()}, key=len, reverse=True)
    if not subs:
        return lambda prompt: False
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in subs))
    return lambda prompt: bool(pattern.search(prompt))


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def evaluate(
    model: Model,
    facts: Sequence[Fact],
    session: EditSession | None = None,
    reference: PreEditPredictions | None = None,
    *,
    fluency: bool = True,
    n_gen_per_prompt: int = 1,
    max_generation_prompts: int | None = 2,
    max_out_len: int = 100,
    top_k: int | None = 5,
    seed: int = 0,
    batch_size: int = 32,
    edited_subjects: Iterable[str] | None = None,
) -> EditMetrics:
    """Evaluate the model as it is now (edited or not) on ``facts``, under both protocols.

    Neighbourhood and locality scores leave out prompts that name an edited subject: the subjects
    of ``facts``, of the edits in ``session`` and ``edited_subjects`` (see the module docstring;
    the unfiltered figures are the ``*_all`` metrics).

    Locality (``locality_acc``) is compared with the unedited model's predictions, from ``reference``
    if given, else computed with ``session.unedited()``. With neither, the model is taken to be
    unedited and ``locality_acc`` is ``None`` (it would be trivially 1).

    Fluency generates from each fact's first ``max_generation_prompts`` generation prompts
    (``None`` = all), ``n_gen_per_prompt`` times each (see :func:`generate_texts`); ``fluency=False``
    skips it, which is much faster on CPU.
    """
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to evaluate")
    if reference is not None and reference.fingerprint != model.fingerprint:
        raise ValueError(
            f"the pre-edit predictions were taken on another model (fingerprint {reference.fingerprint}, "
            f"this model {model.fingerprint})"
        )
    if reference is None and session is not None:
        reference = pre_edit_predictions(model, facts, session=session, batch_size=batch_size)

    subjects = {f.subject for f in facts} | set(edited_subjects or ())
    if session is not None:
        for result in session.history:
            for req in result.requests:
                sub = (req.get("requested_rewrite") or req).get("subject") if isinstance(req, dict) else None
                if isinstance(sub, str):
                    subjects.add(sub)
    names_edited = _subject_matcher(subjects)
    kept_dropped = {"neighborhood": [0, 0], "locality": [0, 0]}

    # one batched pass over every distinct sequence any metric needs
    plan: list[tuple[int, str, tuple[str, str]]] = []
    for i, fact in enumerate(facts):
        for kind in _KINDS:
            plan.extend((i, kind, pair) for pair in _fact_pairs(fact, kind))
    keys = [_pair_ids(model, p, c) for _, _, (p, c) in plan]
    scored = _score_ids(model, list(dict.fromkeys(keys)), batch_size)
    by_fact: list[dict[str, list[tuple[tuple[str, str], Any]]]] = [{k: [] for k in _KINDS} for _ in facts]
    for (i, kind, pair), key in zip(plan, keys, strict=True):
        by_fact[i][kind].append((pair, key))

    rows = []
    for i, fact in enumerate(facts):
        entry = by_fact[i]
        row: dict[str, Any] = {"case_id": fact.case_id, "subject": fact.subject, "target_new": fact.target_new,
                               "target_true": fact.target_true}

        def new_true(kind: str, entry: dict[str, Any] = entry) -> list[tuple[float, float]]:
            items = entry[kind]
            return [(scored[items[j][1]].prob, scored[items[j + 1][1]].prob) for j in range(0, len(items), 2)]

        rewrite = new_true("rewrite")
        row["p_new"], row["p_true"] = rewrite[0]
        row["efficacy_score"] = _mean(float(n > t) for n, t in rewrite)
        row["efficacy_magnitude"] = _mean(n - t for n, t in rewrite)
        para = new_true("paraphrase")
        row["paraphrase_score"] = _mean(float(n > t) for n, t in para)
        row["paraphrase_magnitude"] = _mean(n - t for n, t in para)
        neigh = new_true("neighborhood")
        keep = [not names_edited(p) for p in fact.neighborhood_prompts]
        kept = [nt for nt, k in zip(neigh, keep, strict=True) if k]
        kept_dropped["neighborhood"][0] += len(kept)
        kept_dropped["neighborhood"][1] += len(neigh) - len(kept)
        row["neighborhood_score"] = _mean(float(t > n) for n, t in kept)
        row["neighborhood_magnitude"] = _mean(t - n for n, t in kept)
        row["neighborhood_score_all"] = _mean(float(t > n) for n, t in neigh)
        row["neighborhood_magnitude_all"] = _mean(t - n for n, t in neigh)
        row["n_neighborhood"], row["n_neighborhood_dropped"] = len(kept), len(neigh) - len(kept)
        # EasyEdit: token accuracies of target_new (even positions of rewrite/paraphrase are target_new)
        row["rewrite_acc"] = _mean(scored[k].token_acc for _, k in entry["rewrite"][0::2])
        row["rephrase_acc"] = _mean(scored[k].token_acc for _, k in entry["paraphrase"][0::2])
        row["portability_acc"] = _mean(scored[k].token_acc for _, k in entry["portability"])
        if reference is not None:
            acc = [(not names_edited(prompt),
                    float((scored[k].argmax == torch.tensor(reference.lookup(k))).float().mean()))
                   for (prompt, _), k in entry["locality"]]
            row["locality_acc"] = _mean(a for k, a in acc if k)
            row["locality_acc_all"] = _mean(a for _, a in acc)
            kept_dropped["locality"][0] += sum(k for k, _ in acc)
            kept_dropped["locality"][1] += sum(not k for k, _ in acc)
        else:
            row["locality_acc"] = row["locality_acc_all"] = None
        rows.append(row)

    notes: dict[str, Any] = {
        "probability": "exp(-mean token NLL of ' ' + target), BOS-prepended prompt",
        "locality_reference": "pre-edit predictions" if reference is not None else "none (model taken as unedited)",
        "specificity_prompts": {kind: {"kept": k, "dropped_edited_subject": d}
                                for kind, (k, d) in kept_dropped.items()},
        "edited_subjects": len(subjects),
    }
    memory = memory_of(model)
    if memory is not None and memory.active:
        notes["routing"] = _routing(memory, facts, rows)
    if fluency:
        gen_settings = dict(n_gen_per_prompt=n_gen_per_prompt, max_out_len=max_out_len, top_k=top_k, seed=seed)
        # every fact's prompts in one call: batched generation, each prompt's texts as if alone
        per_fact = [generation_prompts(fact, max_generation_prompts) for fact in facts]
        texts = generate_texts(model, [p for prompts in per_fact for p in prompts], **gen_settings)
        at = 0
        for i, prompts in enumerate(per_fact):
            n = len(prompts) * n_gen_per_prompt
            rows[i]["fluency"] = _mean(ngram_entropy(t) for t in texts[at : at + n])
            at += n
        notes["fluency"] = {**gen_settings, "max_generation_prompts": max_generation_prompts,
                            "tokenizer": "regex approximation of nltk.word_tokenize"}
    else:
        for row in rows:
            row["fluency"] = None

    return EditMetrics.from_rows(rows, notes)


def _routing(memory: SideMemory, facts: Sequence[Fact], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which memory answered each fact's rewrite, paraphrase and neighbourhood prompts (into ``rows``), and
    the share of each kind routed to the side memory (returned for the notes)."""
    kinds = {"rewrite": lambda f: [f.text], "paraphrase": lambda f: list(f.paraphrase_prompts),
             "neighborhood": lambda f: list(f.neighborhood_prompts)}
    prompts = list(dict.fromkeys(p for f in facts for get in kinds.values() for p in get(f)))
    routes = dict(zip(prompts, memory.route(prompts), strict=True))
    shares: dict[str, list[bool]] = {k: [] for k in kinds}
    for fact, row in zip(facts, rows, strict=True):
        row["routing"] = {k: [routes[p].to_dict() for p in get(fact)] for k, get in kinds.items()}
        for k, got in row["routing"].items():
            shares[k].extend(r["routed"] for r in got)
    return {"memory": memory.kind, "layer": memory.layer, "edits": memory.n_edits,
            "routed_share": {k: (sum(v) / len(v) if v else None) for k, v in shares.items()}}


def evaluate_edit(
    model: Model,
    result: EditResult,
    facts: Sequence[Fact],
    session: EditSession | None = None,
    **kwargs: Any,
) -> EditMetrics:
    """Apply ``result`` temporarily, evaluate it on ``facts`` against the unedited model, undo it.

    ``session`` defaults to a fresh :class:`EditSession`; edits already applied in it stay applied
    (the new edit is evaluated on top of them, locality still against the original weights).
    Keyword arguments go to :func:`evaluate`.
    """
    session = session if session is not None else EditSession(model)
    reference = kwargs.pop("reference", None)
    if reference is None:
        reference = pre_edit_predictions(model, facts, session=session, batch_size=kwargs.get("batch_size", 32))
    with session.temporary(result):
        return evaluate(model, facts, reference=reference, **kwargs)


def _metrics_headline(m: dict[str, Any]) -> str:
    cf = m.get("counterfact") or {}
    return (f"{m.get('n_facts')} facts: efficacy {fmt(cf.get('efficacy_score'))}, paraphrase "
            f"{fmt(cf.get('paraphrase_score'))}, neighbourhood {fmt(cf.get('neighborhood_score'))}")


register("edit_metrics", EditMetrics.load, _metrics_headline)
