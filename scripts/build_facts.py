"""Build (or re-check) knowscope's bundled fact sets, ``knowscope/data/facts.json`` and ``facts_extended.json``.

The bundled facts are CounterFact-format records of facts that the DEFAULT model
(SmolLM2-135M-Instruct) actually knows: a fact is kept only when the model's greedy next token
after the filled prompt (BOS prepended, :func:`knowscope.knowledge.fact_accuracy`'s convention)
is the first token of ``" " + target_true``. Tracing and editing need facts the model knows:
a trace of a fact the model gets wrong localises nothing, and an edit's efficacy is only
meaningful against a real prior belief.

The candidates (relations, subjects, objects, templates) are hand-written, in
``scripts/fact_candidates.py`` (the default set) and ``scripts/fact_candidates_extended.py``. All relations
are many-to-one, so every fact has neighbourhood prompts: the same relation asked about OTHER
subjects with the same true object (CounterFact's specificity test). Neighbourhood prompts the
model answers correctly are preferred, so that an edit's neighbourhood score measures real
damage rather than noise on prompts the model never knew.

Two sets are built from the same code. ``--set default`` (the default) is the bundled
``facts.json``: RELATIONS, at most ``MAX_FACTS_PER_RELATION`` facts per relation.
``--set extended`` is ``facts_extended.json``, a larger set for sequential-editing benchmarks (hundreds
of edits plus a never-edited probe set): RELATIONS with the extra subjects of EXTRA_GROUPS, plus the
relations of EXTENDED_RELATIONS, at most ``MAX_FACTS_PER_RELATION_EXTENDED`` facts per relation, and
every subject unique across the set (see fact_candidates_extended.py).

Usage::

    python scripts/build_facts.py                           # build knowscope/data/facts.json
    python scripts/build_facts.py --out my.json             # build elsewhere
    python scripts/build_facts.py --check                   # re-verify the bundled file; exit 1 if a fact is not known
    python scripts/build_facts.py --set extended            # build knowscope/data/facts_extended.json
    python scripts/build_facts.py --set extended --check    # re-verify it

The build is deterministic: candidates are visited in the order written, the
counterfactual object is chosen by a fixed rule, and the model runs in eval mode without
sampling.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fact_candidates import Relation
from fact_candidates_extended import FACT_SETS, MAX_FACTS_PER_RELATION_EXTENDED, relations_for

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "knowscope" / "data" / "facts.json"
EXTENDED_OUT = REPO / "knowscope" / "data" / "facts_extended.json"
EXTRA_OUT = REPO / "knowscope" / "data" / "facts_extra.json"

MAX_NEIGHBORS = 10  # CounterFact stores 10 neighbourhood prompts per record
MIN_NEIGHBORS = 5
MIN_PARAPHRASES = 2
MAX_FACTS_PER_RELATION = 40

log = logging.getLogger("build_facts")


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The model's greedy answer to one prompt, and whether it is the first token of the target."""

    predicted: str
    correct: bool
    margin: float  # logit of the target's first token minus the best other logit (> 0 iff correct)


def score_prompts(model, prompts: dict[str, str], batch_size: int = 64) -> dict[str, Verdict]:
    """Greedy next token for each ``prompt -> target`` (BOS prepended, as knowscope scores facts).

    Prompts are sorted by token length so that batches hold little padding; the verdict of each
    prompt does not depend on its batch (causal attention, right padding).
    """
    import torch

    order = sorted(prompts, key=lambda p: (len(model.tokenizer.encode(p, add_special_tokens=False)), p))
    out: dict[str, Verdict] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = model.last_logits(chunk, batch_size=batch_size)
        for prompt, row in zip(chunk, logits, strict=True):
            target_id = model.encode_target(" " + prompts[prompt])[0]
            top = int(row.argmax())
            others = row.clone()
            others[target_id] = -torch.inf
            out[prompt] = Verdict(
                predicted=model.tokenizer.decode([top]),
                correct=top == target_id,
                margin=float(row[target_id] - others.max()),
            )
        log.info("scored %d/%d prompts", min(start + batch_size, len(order)), len(order))
    return out


# --- building ---------------------------------------------------------------------------------------


def _mentions(text: str, target: str) -> bool:
    return target.lower() in text.lower()


def candidate_prompts(relations: list[Relation]) -> dict[str, str]:
    """The main-template prompt of every candidate subject -> its true object (what selection needs)."""
    prompts: dict[str, str] = {}
    for rel in relations:
        for obj, subjects in rel.groups.items():
            for subject in subjects:
                prompts[rel.template.format(subject)] = obj
    return prompts


def _first_token(model, target: str) -> int:
    return model.encode_target(" " + target)[0]


def _counterfactual(model, rel: Relation, obj: str, index: int) -> str:
    """A deterministic counterfactual object: another object of the relation, cycling with ``index``,
    whose first token differs from the true object's first token (so the edit target is unambiguous)."""
    others = [o for o in rel.groups if o != obj and _first_token(model, o) != _first_token(model, obj)]
    if not others:
        raise ValueError(f"relation {rel.relation_id}: no counterfactual object for {obj!r}")
    return others[index % len(others)]


def _names(text: str, subject: str) -> bool:
    """Does ``text`` name ``subject`` as a whole word or phrase (ignoring case)? The word-boundary rule of
    knowscope.editing.evaluation, which drops the neighbourhood prompts that name an edited subject."""
    if subject.lower() not in text.lower():
        return False
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", text, flags=re.IGNORECASE) is not None


def _known_facts(model, rel: Relation, verdicts: dict[str, Verdict], min_margin: float) -> dict[str, list]:
    """Per object of ``rel``, the facts the model knows, in candidate order, each as ``(fact, neighbours)``:
    ``neighbours`` is every neighbourhood prompt in preference order (``fact`` holds the first ``MAX_NEIGHBORS``)."""
    from knowscope.facts import Fact

    per_object: dict[str, list] = {}
    for obj, subjects in rel.groups.items():
        kept = []
        for index, subject in enumerate(subjects):
            text = rel.template.format(subject)
            verdict = verdicts[text]
            paraphrases = [t.format(subject) for t in rel.paraphrases]
            if not verdict.correct or verdict.margin < min_margin:
                continue
            if any(_mentions(p, obj) for p in [text, *paraphrases]):
                continue
            neighbours = [
                rel.template.format(s) for s in subjects
                if s != subject and not _mentions(rel.template.format(s), obj) and subject not in s
            ]
            # neighbours the model answers correctly first (stable: candidate order within each part)
            neighbours.sort(key=lambda p: not verdicts[p].correct)
            if len(neighbours) < MIN_NEIGHBORS:
                continue
            fact = Fact(
                subject=subject,
                prompt=rel.template,
                target_true=obj,
                target_new=_counterfactual(model, rel, obj, index),
                relation_id=rel.relation_id,
                paraphrase_prompts=paraphrases,
                neighborhood_prompts=neighbours[:MAX_NEIGHBORS],
                generation_prompts=[t.format(subject) for t in rel.generation],
            )
            kept.append((fact, neighbours))
        per_object[obj] = kept
    return per_object


def _without_names(per_object: dict[str, list], subjects: list[str]) -> dict[str, list]:
    """``per_object`` with every neighbourhood prompt that names one of ``subjects`` removed (re-cut to
    ``MAX_NEIGHBORS``); a fact left with fewer than ``MIN_NEIGHBORS`` is removed."""
    out: dict[str, list] = {}
    for obj, kept in per_object.items():
        out[obj] = []
        for fact, neighbours in kept:
            clean = [p for p in neighbours if not any(_names(p, s) for s in subjects)]
            if len(clean) < MIN_NEIGHBORS:
                log.info("%s: skipping %r (fewer than %d neighbourhood prompts name no subject of another relation)",
                         fact.relation_id, fact.subject, MIN_NEIGHBORS)
                continue
            fact.neighborhood_prompts = clean[:MAX_NEIGHBORS]
            out[obj].append((fact, clean))
    return out


def select_facts(model, relations: list[Relation], verdicts: dict[str, Verdict], min_margin: float,
                 max_per_relation: int = MAX_FACTS_PER_RELATION, unique_subjects: bool = False,
                 seed: list | None = None) -> list:
    """The facts the model knows, with paraphrases and (preferably correctly answered) neighbourhood prompts.

    Per relation, known facts are taken round-robin over the objects (so no object dominates), up to
    ``max_per_relation``. A fact is kept when its prompt's greedy token is the target's first
    token with a logit margin of at least ``min_margin`` (so the verdict does not flip with batching
    or device), the target does not occur in any of its prompts, and at least ``MIN_NEIGHBORS``
    other subjects share its object.

    With ``unique_subjects`` (the extended set), relations are served in order, earlier ones first, and
    no prompt of a fact names the subject of a fact of another relation: a candidate is skipped when its
    subject is, names or is named by a subject already chosen, or when a neighbourhood prompt of a fact
    chosen for an earlier relation names it; and a candidate's neighbourhood prompts that name a subject
    chosen for an earlier relation are removed (the candidate is skipped if fewer than ``MIN_NEIGHBORS``
    remain). Sequential-editing evaluation drops every neighbourhood prompt that names an edited subject,
    so such prompts would be lost anyway once that subject is edited.

    ``seed`` (the extra set: facts outside the extended set) are another set's facts, checked as if chosen
    before: a candidate is never one of their subjects, nor names or is named by one; their facts of OTHER
    relations count as earlier relations (names in neighbourhood prompts, stored prompts). A neighbourhood
    prompt may name a seed subject of the same relation: it is that relation's neighbour, as in CounterFact.
    """
    facts: list = []
    seed = list(seed or [])
    taken: list[str] = []  # subjects chosen so far, all relations (unique_subjects only)
    stored: list[str] = []  # neighbourhood prompts of the facts of earlier relations (unique_subjects only)
    for rel in relations:
        per_object = _known_facts(model, rel, verdicts, min_margin)
        others = [f for f in seed if f.relation_id != rel.relation_id]
        if unique_subjects:
            per_object = _without_names(per_object, taken + [f.subject for f in others])
        chosen: list = []
        while len(chosen) < max_per_relation and any(per_object.values()):
            for obj in rel.groups:
                while unique_subjects and per_object[obj] and _blocked(
                        per_object[obj][0][0].subject, taken + [f.subject for f in seed],
                        stored + [p for f in others for p in f.neighborhood_prompts]):
                    log.info("%s: skipping %r (another fact's subject or neighbourhood prompt names it, or it "
                             "names another fact's subject)", rel.relation_id, per_object[obj][0][0].subject)
                    per_object[obj].pop(0)
                if per_object[obj] and len(chosen) < max_per_relation:
                    chosen.append(per_object[obj].pop(0)[0])
                    taken.append(chosen[-1].subject)
        chosen.sort(key=lambda f: (list(rel.groups).index(f.target_true), rel.groups[f.target_true].index(f.subject)))
        facts.extend(chosen)
        stored.extend(p for f in chosen for p in f.neighborhood_prompts)
    for case_id, fact in enumerate(facts):
        fact.case_id = case_id
    return facts


def _blocked(subject: str, taken: list[str], stored: list[str]) -> bool:
    """May ``subject`` not be chosen: is it, does it name, or is it named by a chosen subject, or does a stored
    neighbourhood prompt name it?"""
    return (any(_names(subject, other) or _names(other, subject) for other in taken)
            or any(_names(prompt, subject) for prompt in stored))


def summarize(model, facts: list, verdicts: dict[str, Verdict] | None = None) -> dict:
    """Counts and the model's accuracy on the facts' prompts, paraphrases and neighbourhood prompts."""
    verdicts = dict(verdicts or {})
    missing: dict[str, str] = {}
    for f in facts:
        for p in [f.text, *f.paraphrase_prompts, *f.neighborhood_prompts]:
            if p not in verdicts:
                missing[p] = f.target_true
    verdicts.update(score_prompts(model, missing) if missing else {})
    para = [verdicts[p].correct for f in facts for p in f.paraphrase_prompts]
    neigh = [verdicts[p].correct for f in facts for p in f.neighborhood_prompts]
    lengths = Counter(len(model.encode_target(" " + f.subject)) for f in facts)
    return {
        "n_facts": len(facts),
        "relations": dict(Counter(f.relation_id for f in facts)),
        "objects": len({(f.relation_id, f.target_true) for f in facts}),
        "top1": sum(verdicts[f.text].correct for f in facts) / max(len(facts), 1),
        "paraphrase_accuracy": sum(para) / max(len(para), 1),
        "n_paraphrases": len(para),
        "neighborhood_accuracy": sum(neigh) / max(len(neigh), 1),
        "n_neighborhood": len(neigh),
        "subject_token_lengths": dict(sorted(lengths.items())),
    }


def build(out: Path, min_margin: float, fact_set: str = "default") -> int:
    from knowscope.facts import save_facts
    from knowscope.knowledge import fact_accuracy
    from knowscope.models import load_model

    model = load_model(device="cpu")
    relations = relations_for(fact_set)
    candidates = candidate_prompts(relations)
    verdicts = score_prompts(model, candidates)
    if fact_set == "default":
        facts = select_facts(model, relations, verdicts, min_margin)
    elif fact_set == "extra":
        from knowscope.facts import load_bundled_facts

        extended = load_bundled_facts(name="extended")
        facts = select_facts(model, relations, verdicts, min_margin, max_per_relation=MAX_FACTS_PER_RELATION_EXTENDED,
                             unique_subjects=True, seed=extended)
    else:
        facts = select_facts(model, relations, verdicts, min_margin,
                             max_per_relation=MAX_FACTS_PER_RELATION_EXTENDED, unique_subjects=True)
    # Re-check with exactly the function the integration test and --check use.
    report = fact_accuracy(model, facts)
    wrong = [r["case_id"] for r in report.rows if not r["correct"]]
    if wrong:
        log.warning("dropping %d facts that fact_accuracy scores wrong: %s", len(wrong), wrong)
        facts = [f for f in facts if f.case_id not in set(wrong)]
        for case_id, fact in enumerate(facts):
            fact.case_id = case_id
    save_facts(facts, out)
    stats = summarize(model, facts, verdicts)
    print(json.dumps(stats, indent=1))
    print(f"tried {len(candidates)} candidate facts over {len(relations)} relations ({fact_set} set)")
    print(f"wrote {len(facts)} facts to {out}")
    return 0


def check(path: Path) -> int:
    from knowscope.facts import load_facts
    from knowscope.knowledge import fact_accuracy
    from knowscope.models import load_model

    facts = load_facts(path)
    model = load_model(device="cpu")
    report = fact_accuracy(model, facts)
    wrong = [r for r in report.rows if not r["correct"]]
    print(json.dumps(summarize(model, facts), indent=1))
    for r in wrong:
        print(f"NOT KNOWN: case {r['case_id']}: {r['prompt']!r} -> {r['predicted']!r}, expected {r['target_true']!r}")
    print(f"top-1 accuracy {report.accuracy:.3f} on {len(facts)} facts from {path}")
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="fact_set", choices=FACT_SETS, default="default",
                        help="which fact set: default (facts.json), extended (facts_extended.json) or extra "
                             "(facts_extra.json: the extended candidates the extended set left out)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (with --check: the file to check); default: the set's bundled file")
    parser.add_argument("--check", action="store_true",
                        help="re-verify an existing file; exit 1 if any fact is not known")
    parser.add_argument("--min-margin", type=float, default=0.1,
                        help="keep a fact only if its target's logit beats the runner-up by this much")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.min_margin < 0:
        raise SystemExit(f"--min-margin must be >= 0, got {args.min_margin}")
    out = args.out if args.out is not None else {"default": DEFAULT_OUT, "extended": EXTENDED_OUT,
                                                 "extra": EXTRA_OUT}[args.fact_set]
    if args.check:
        if not out.is_file():
            raise SystemExit(f"no fact file at {out}")
        return check(out)
    return build(out, args.min_margin, args.fact_set)


if __name__ == "__main__":
    sys.exit(main())
