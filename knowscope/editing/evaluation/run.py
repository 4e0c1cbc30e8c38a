"""``evaluate()``: one batched pass over every prompt of every fact, under the three protocols.

Teacher-forced scores come from one packed scoring pass over every distinct (prompt, continuation);
the generation scores from one batched greedy decoding of every distinct prompt (both protocols
always run together unless ``generation=False``). Specificity (neighbourhood, locality, relation
specificity) is compared with the unedited model: a :class:`PreEditPredictions` taken before editing,
or the session's original weights. Which prompts an edit is supposed to change is decided by
(subject, relation) (:mod:`.plan`). Scores are averaged over each fact's prompts first, then over
facts (ROME's per-case averaging).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from knowscope.editing.evaluation.generation import begins_with, decode, decode_length, greedy_from_scores
from knowscope.editing.evaluation.metrics import EditMetrics, mean
from knowscope.editing.evaluation.plan import FOLLOW_KINDS, KINDS, EditedFacts, Prompt, plan
from knowscope.editing.evaluation.reference import PreEditPredictions, keep_requests, pre_edit_predictions
from knowscope.editing.memory import SideMemory, memory_of
from knowscope.editing.scoring import _pair_ids, _score_ids, generate_texts, generation_prompts, ngram_entropy
from knowscope.editing.session import EditResult, EditSession
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)


def evaluate(
    model: Model,
    facts: Sequence[Fact],
    session: EditSession | None = None,
    reference: PreEditPredictions | None = None,
    *,
    generation: bool = True,
    fluency: bool = True,
    n_gen_per_prompt: int = 1,
    max_generation_prompts: int | None = 2,
    max_out_len: int = 100,
    top_k: int | None = 5,
    seed: int = 0,
    batch_size: int = 32,
    edited: Iterable[Fact | dict[str, Any]] | None = None,
) -> EditMetrics:
    """Evaluate the model as it is now (edited or not) on ``facts``, under every protocol.

    Specificity prompts that an edit is supposed to change are left out of the main scores, decided
    by (subject, relation) of the edits: the evaluated ``facts`` themselves, the edits in ``session``
    and ``edited`` (more facts or edit requests; see :mod:`knowscope.editing.evaluation.plan`).

    Locality, relation specificity and every generation specificity score are compared with the
    unedited model's predictions, from ``reference`` if given, else computed with
    ``session.unedited()``. With neither, the model is taken to be unedited and those are ``None``.

    ``generation=False`` skips greedy decoding (the ``gen_*`` metrics are then ``None``). Fluency
    generates from each fact's first ``max_generation_prompts`` generation prompts (``None`` = all),
    ``n_gen_per_prompt`` times each (:func:`~knowscope.editing.scoring.generate_texts`);
    ``fluency=False`` skips it, which is much faster on CPU.
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
        reference = pre_edit_predictions(model, facts, session=session, batch_size=batch_size, generation=generation)
    if generation and reference is not None and not reference.covers_generation(keep_requests(model, facts)[1]):
        if session is None:
            raise ValueError("the pre-edit predictions do not cover the generation prompts of these facts (taken "
                             "without generation, or on other facts); take them with pre_edit_predictions(model, "
                             "facts) before editing, or pass generation=False")
        reference = pre_edit_predictions(model, facts, session=session, batch_size=batch_size)

    edits = EditedFacts.of([*facts, *(edited or ()), *(r for res in (session.history if session else [])
                                                       for r in res.requests)])
    prompts = plan(facts, edits)

    # one packed teacher-forced pass over every distinct sequence any metric needs
    tf_keys: dict[tuple[str, str], Any] = {}
    for rows in prompts:
        for p in rows:
            for c in {p.answer, p.new, p.true} - {None}:
                tf_keys.setdefault((p.prompt, c), None)
    for pc in tf_keys:
        tf_keys[pc] = _pair_ids(model, *pc)
    scored = _score_ids(model, list(dict.fromkeys(tf_keys.values())), batch_size)

    def pair(prompt: str, continuation: str | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tf_keys[(prompt, continuation)]

    def tf(prompt: str, continuation: str | None) -> Any:
        return scored[pair(prompt, continuation)]

    generated: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
    gen_key: dict[tuple[str, str, bool], tuple[tuple[int, ...], int]] = {}
    if generation:  # greedy continuations, decoded from where the teacher-forced argmax leaves the answer
        items = {}
        for rows in prompts:
            for p in rows:
                follow = p.kind in FOLLOW_KINDS
                prompt_ids, answer_ids = pair(p.prompt, p.answer)
                n = decode_length(answer_ids, follow)
                gen_key[(p.prompt, p.answer, follow)] = (prompt_ids, n)
                items[(prompt_ids, n)] = (prompt_ids, answer_ids, scored[(prompt_ids, answer_ids)].argmax.tolist(), n)
        generated = greedy_from_scores(model, list(items.values()), batch_size=max(batch_size, 64))

    rows_out = [_fact_row(model, fact, fact_prompts, tf, pair, reference, generated, gen_key)
                for fact, fact_prompts in zip(facts, prompts, strict=True)]

    counts = {k: {"kept": 0, "dropped_edited": 0} for k in KINDS}
    for rows in prompts:
        for p in rows:
            counts[p.kind]["kept" if p.kept else "dropped_edited"] += 1
    notes: dict[str, Any] = {
        "protocols": {"counterfact": "P(c | prompt) = exp(-mean token NLL of ' ' + target), BOS-prepended prompt",
                      "easyedit": "teacher-forced token accuracy; locality / relation specificity against the "
                                  "unedited model's argmax",
                      "generation": "greedy decoding of len(answer tokens) + 2 tokens; follow kinds: begins with "
                                    "the answer (normalised); keep kinds: first len(answer) tokens unchanged from "
                                    "the unedited model" if generation else "not run"},
        "locality_reference": "pre-edit predictions" if reference is not None else "none (model taken as unedited)",
        "prompts": counts,
        "edited_facts": len(edits.edits),
    }
    memory = memory_of(model)
    if memory is not None and memory.active:
        notes["routing"] = _routing(memory, facts, rows_out)
    if fluency:
        gen_settings = dict(n_gen_per_prompt=n_gen_per_prompt, max_out_len=max_out_len, top_k=top_k, seed=seed)
        # every fact's prompts in one call: batched generation, each prompt's texts as if alone
        per_fact = [generation_prompts(fact, max_generation_prompts) for fact in facts]
        texts = generate_texts(model, [p for ps in per_fact for p in ps], **gen_settings)
        at = 0
        for i, ps in enumerate(per_fact):
            n = len(ps) * n_gen_per_prompt
            rows_out[i]["fluency"] = mean(ngram_entropy(t) for t in texts[at : at + n])
            at += n
        notes["fluency"] = {**gen_settings, "max_generation_prompts": max_generation_prompts,
                            "tokenizer": "regex approximation of nltk.word_tokenize"}
    return EditMetrics.from_rows(rows_out, notes)


def _fact_row(model: Model, fact: Fact, prompts: list[Prompt], tf: Any, pair: Any,
              reference: PreEditPredictions | None, generated: dict, gen_key: dict) -> dict[str, Any]:
    """One fact's metrics (keys of :data:`~knowscope.editing.evaluation.metrics.ALL_KEYS`) and details."""
    by = {k: [p for p in prompts if p.kind == k] for k in KINDS}
    row: dict[str, Any] = {"case_id": fact.case_id, "subject": fact.subject, "relation_id": fact.relation_id,
                           "target_new": fact.target_new, "target_true": fact.target_true}

    def new_true(ps: list[Prompt]) -> list[tuple[float, float]]:
        return [(tf(p.prompt, p.new).prob, tf(p.prompt, p.true).prob) for p in ps]

    rewrite = new_true(by["rewrite"])
    row["p_new"], row["p_true"] = rewrite[0]
    row["efficacy_score"] = mean(float(n > t) for n, t in rewrite)
    row["efficacy_magnitude"] = mean(n - t for n, t in rewrite)
    para = new_true(by["paraphrase"])
    row["paraphrase_score"] = mean(float(n > t) for n, t in para)
    row["paraphrase_magnitude"] = mean(n - t for n, t in para)
    neigh = new_true(by["neighborhood"])
    kept = [nt for nt, p in zip(neigh, by["neighborhood"], strict=True) if p.kept]
    row["neighborhood_score"] = mean(float(t > n) for n, t in kept)
    row["neighborhood_magnitude"] = mean(t - n for n, t in kept)
    row["neighborhood_score_all"] = mean(float(t > n) for n, t in neigh)
    row["neighborhood_magnitude_all"] = mean(t - n for n, t in neigh)
    row["n_neighborhood"], row["n_neighborhood_dropped"] = len(kept), len(neigh) - len(kept)
    rel = [p for p in by["relation_specificity"] if p.kept]
    row["relation_specificity_score"] = mean(float(t > n) for n, t in new_true(rel))
    row["n_relation_specificity"] = len(rel)
    row["n_relation_specificity_dropped"] = len(by["relation_specificity"]) - len(rel)
    # EasyEdit: token accuracies of the answer
    row["rewrite_acc"] = mean(tf(p.prompt, p.answer).token_acc for p in by["rewrite"])
    row["rephrase_acc"] = mean(tf(p.prompt, p.answer).token_acc for p in by["paraphrase"])
    row["portability_acc"] = mean(tf(p.prompt, p.answer).token_acc for p in by["portability"])
    if reference is not None:
        def agree(p: Prompt) -> float:
            s = tf(p.prompt, p.answer)
            return float((s.argmax == torch.tensor(reference.lookup(pair(p.prompt, p.answer)))).float().mean())

        row["locality_acc"] = mean(agree(p) for p in by["locality"] if p.kept)
        row["locality_acc_all"] = mean(agree(p) for p in by["locality"])
        row["relation_specificity"] = mean(agree(p) for p in rel)
    if generated:
        _generation_scores(model, row, by, reference, generated, gen_key)
    return row


def _generation_scores(model: Model, row: dict[str, Any], by: dict[str, list[Prompt]],
                       reference: PreEditPredictions | None, generated: dict, gen_key: dict) -> None:
    """The ``gen_*`` metrics of one fact, and each prompt's text before and after (``row["prompts"]``)."""
    details = []
    success: dict[str, list[float]] = {k: [] for k in KINDS}
    for kind in KINDS:
        for p in by[kind]:
            key = gen_key[(p.prompt, p.answer, kind in FOLLOW_KINDS)]
            after = generated[key]
            item: dict[str, Any] = {"kind": kind, "prompt": p.prompt, "answer": p.answer.strip(),
                                    "after": decode(model, after), "kept": p.kept}
            if kind in FOLLOW_KINDS:
                item["success"] = begins_with(item["after"], p.answer)
            elif reference is not None:
                before = reference.generated[key]  # the answer's own length, as ``after``
                item["before"] = decode(model, before)
                item["success"] = tuple(after) == tuple(before)
            if "success" in item and p.kept:
                success[kind].append(float(item["success"]))
            details.append(item)
    names = {"rewrite": "gen_efficacy", "paraphrase": "gen_paraphrase", "portability": "gen_portability",
             "neighborhood": "gen_neighborhood", "locality": "gen_locality",
             "relation_specificity": "gen_relation_specificity"}
    for kind, name in names.items():
        row[name] = mean(success[kind])
    row["prompts"] = details


def _routing(memory: SideMemory, facts: Sequence[Fact], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which memory answered each fact's rewrite, paraphrase, neighbourhood and relation-specificity
    prompts (into ``rows``), and the share of each kind routed to the side memory (for the notes)."""
    kinds = {"rewrite": lambda f: [f.text], "paraphrase": lambda f: list(f.paraphrase_prompts),
             "neighborhood": lambda f: list(f.neighborhood_prompts),
             "relation_specificity": lambda f: [p.prompt for p in f.relation_specificity]}
    prompts = list(dict.fromkeys(p for f in facts for get in kinds.values() for p in get(f)))
    routes = dict(zip(prompts, memory.route(prompts), strict=True))
    shares: dict[str, list[bool]] = {k: [] for k in kinds}
    for fact, row in zip(facts, rows, strict=True):
        row["routing"] = {k: [routes[p].to_dict() for p in get(fact)] for k, get in kinds.items()}
        for k, got in row["routing"].items():
            shares[k].extend(r["routed"] for r in got)
    return {"memory": memory.kind, "layer": memory.layer, "edits": memory.n_edits,
            "routed_share": {k: (sum(v) / len(v) if v else None) for k, v in shares.items()}}


def evaluate_edit(model: Model, result: EditResult, facts: Sequence[Fact], session: EditSession | None = None,
                  **kwargs: Any) -> EditMetrics:
    """Apply ``result`` temporarily, evaluate it on ``facts`` against the unedited model, undo it.

    ``session`` defaults to a fresh :class:`EditSession`; edits already applied in it stay applied
    (the new edit is evaluated on top of them, locality still against the original weights).
    Keyword arguments go to :func:`evaluate`.
    """
    session = session if session is not None else EditSession(model)
    reference = kwargs.pop("reference", None)
    if reference is None:
        reference = pre_edit_predictions(model, facts, session=session, batch_size=kwargs.get("batch_size", 32),
                                         generation=kwargs.get("generation", True))
    with session.temporary(result):
        return evaluate(model, facts, reference=reference, **kwargs)
