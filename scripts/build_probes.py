"""Add relation-specificity and portability probes to the bundled fact sets, and build the same-subject set.

An edit of one fact should change what follows from it and nothing else about its subject. The bundled
facts (``facts.json``, ``facts_extended.json``, built by ``scripts/build_facts.py``) test the edited
fact, its paraphrases and other subjects with the same object; this script adds the two remaining
KnowEdit-style tests to every record, changing nothing else in it:

* ``relation_specificity``: the SAME subject under OTHER relations, with the true answer, which the
  edit must leave alone (the capital of a country whose official language is edited). Only relations
  that the edit does not determine are used (``probe_knowledge.DEPENDENT``): editing a city's country
  changes its continent, so that is portability, not specificity. Sources: the subject's appearance in
  other candidate relations (``fact_candidates*.py``) and hand-written tables of true facts
  (``probe_knowledge.py``, ``probe_knowledge_people.py``, ``probe_knowledge_sites.py``). A probe is kept
  only when the default model answers it right (greedy first token, build_facts' convention, with a margin); up to
  ``MAX_PROBES`` per fact, largest margin first, one per relation family.
* ``portability``: one hop after the edited link (MQuAKE-style). After editing a landmark's city to
  Rome, "{landmark} is located in the country of" should answer Italy. Kept only when the model knows
  the hop of the new object directly, the hop changes the answer, and (second filter) the unedited
  model answers the composed prompt with the hop of the true object, unless that filter removes more
  than half, in which case the first filter alone is used (reported).

It also writes ``facts_same_subject.json``: extended-set subjects edited under two or three relations in
one sequential run (the original fact, then one or two new records made from its probes), ordered all
first edits, then all second, then all third edits, so that a run edits a subject again after others.

Usage::

    python scripts/build_probes.py            # rewrite the three files (about 2 minutes on 2 CPU cores)
    python scripts/build_probes.py --check    # rebuild in memory; exit 1 unless byte-identical to the files

Deterministic: tables and candidates are visited in the order written, ties are broken by relation id,
and prompts are scored in a fixed order. Rerun it after ``build_facts.py`` rewrites a set (that drops the
probes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import probe_knowledge as pk
import probe_knowledge_people as pkp
import probe_knowledge_sites as pks
from build_facts import (
    DEFAULT_OUT,
    EXTENDED_OUT,
    MAX_NEIGHBORS,
    MIN_NEIGHBORS,
    REPO,
    _counterfactual,
    _mentions,
    _names,
    score_prompts,
)
from fact_candidates import Relation
from fact_candidates_extended import relations_for

SAME_SUBJECT_OUT = REPO / "knowscope" / "data" / "facts_same_subject.json"
MAX_PROBES = 3
MIN_MARGIN = 0.1  # as build_facts: a verdict this clear does not flip with batching
MAX_NEW_EDITS = 2  # new records per same-subject subject (so 2 or 3 edits per subject)

log = logging.getLogger("build_probes")


class Candidate(NamedTuple):
    """A passing probe of a subject: relation, filled prompt, the true answer the model gives, margin."""

    relation_id: str
    prompt: str
    answer: str
    margin: float


def family(relation_id: str) -> str:
    return pk.FAMILY.get(relation_id, relation_id)


# --- relations -------------------------------------------------------------------------------------------


def probe_relations() -> dict[str, Relation]:
    """Every relation a probe may use: the candidate relations (with extras, without excluded rows), then the
    hand-written ones. The landmarks of P276 join ``landmark``; P1532's clubs join ``club_sport``."""
    out: dict[str, Relation] = {}
    for rel in relations_for("extended"):
        grp = {o: [s for s in ss if (rel.relation_id, s) not in pk.CANDIDATE_EXCLUDED] for o, ss in rel.groups.items()}
        for extras in (pk.CANDIDATE_EXTRAS_PLACES, pkp.CANDIDATE_EXTRAS_PEOPLE):
            for obj, subjects in extras.get(rel.relation_id, {}).items():
                grp.setdefault(obj, []).extend(s for s in subjects if s not in grp[obj])
        out[rel.relation_id] = Relation(rel.relation_id, rel.template, list(rel.paraphrases), list(rel.generation), grp)
    for rel in [*pk.PROBE_RELATIONS, *pkp.people_relations(out["P106"]), *pks.site_relations()]:
        out[rel.relation_id] = Relation(rel.relation_id, rel.template, list(rel.paraphrases), list(rel.generation),
                                        {o: list(ss) for o, ss in rel.groups.items()})
    for city, landmarks in out["P276"].groups.items():
        for landmark in landmarks:
            if landmark.startswith("The "):
                out["landmark"].groups.setdefault(landmark[4:], []).append(city)
    for clubs in out["P1532"].groups.values():
        for sport in ("football", "soccer"):
            out["club_sport"].groups[sport].extend(clubs)
    return out


def answers_of(rel: Relation, subject: str) -> list[str]:
    return [obj for obj, subjects in rel.groups.items() if subject in subjects]


# --- scoring ----------------------------------------------------------------------------------------------


class Scorer:
    """build_facts.score_prompts with a cache; several targets for one prompt are scored in later rounds."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[tuple[str, str], object] = {}
        self._first: dict[str, int] = {}

    def first(self, answer: str) -> int:
        if answer not in self._first:
            self._first[answer] = self.model.encode_target(" " + answer)[0]
        return self._first[answer]

    def score(self, pairs: list[tuple[str, str]]) -> None:
        todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        while todo:  # one target per prompt and call; a prompt's other targets wait for the next call
            batch: dict[str, str] = {}
            rest = []
            for prompt, target in todo:
                if prompt in batch:
                    rest.append((prompt, target))
                else:
                    batch[prompt] = target
            for prompt, verdict in score_prompts(self.model, batch).items():
                self.cache[(prompt, batch[prompt])] = verdict
            todo = rest

    def knows(self, prompt: str, answer: str) -> float | None:
        """The margin if the model answers ``prompt`` with ``answer`` (clearly), else None."""
        verdict = self.cache[(prompt, answer)]
        return verdict.margin if verdict.correct and verdict.margin >= MIN_MARGIN else None

    def best(self, prompt: str, answers: list[str]) -> tuple[str, float] | None:
        """Which of several true answers (distinct first tokens) the model gives, with its margin."""
        for answer in answers:
            margin = self.knows(prompt, answer)
            if margin is not None:
                return answer, margin
        return None

    def distinct(self, answers: list[str]) -> list[str]:
        """``answers`` without those whose first token an earlier one has (they get the same verdict)."""
        firsts: dict[int, str] = {}
        for answer in answers:
            firsts.setdefault(self.first(answer), answer)
        return list(firsts.values())


def subject_pools(scorer: Scorer, relations: dict[str, Relation], subjects: list[str]) -> dict[str, list[Candidate]]:
    """Per subject, every relation the model answers right about it (a relation's answers are synonyms)."""
    asks = {}
    for subject in subjects:
        for rel in relations.values():
            answers = scorer.distinct(answers_of(rel, subject))
            if answers:
                asks[(subject, rel.relation_id)] = (rel.template.format(subject), answers)
    scorer.score([(prompt, a) for prompt, answers in asks.values() for a in answers])
    pools: dict[str, list[Candidate]] = {s: [] for s in subjects}
    for (subject, rel_id), (prompt, answers) in asks.items():
        hit = scorer.best(prompt, answers)
        if hit is not None:
            pools[subject].append(Candidate(rel_id, prompt, *hit))
    return pools


# --- relation specificity ------------------------------------------------------------------------------------


def eligible(scorer: Scorer, fact, probe: Candidate, excluded: set[str] = frozenset()) -> bool:
    """May ``probe`` test an edit of ``fact``: another, independent relation, a prompt of its own, and an
    answer whose first token is neither the true nor the new object's?"""
    fam = family(probe.relation_id)
    if fam == family(fact.relation_id) or fam in pk.DEPENDENT.get(fact.relation_id, ()) or fam in excluded:
        return False
    if probe.prompt in {fact.text, *fact.paraphrase_prompts, *fact.generation_prompts}:
        return False
    if any(_mentions(probe.prompt, t) for t in (fact.target_true, fact.target_new)):
        return False
    return scorer.first(probe.answer) not in {scorer.first(fact.target_true), scorer.first(fact.target_new)}


def select_probes(scorer: Scorer, fact, pool: list[Candidate], excluded: set[str] = frozenset()) -> list[Candidate]:
    """Up to MAX_PROBES eligible probes, largest margin first, one per relation family."""
    chosen: list[Candidate] = []
    for probe in sorted(pool, key=lambda c: (-c.margin, c.relation_id)):
        if len(chosen) < MAX_PROBES and eligible(scorer, fact, probe, excluded) \
                and family(probe.relation_id) not in {family(c.relation_id) for c in chosen}:
            chosen.append(probe)
    return chosen


# --- portability ------------------------------------------------------------------------------------------------


class Chain(NamedTuple):
    prompt: str
    answer: str  # the hop of the new object
    hop_prompt: str  # the hop asked of the new object directly
    true_answer: str  # the hop of the true object


def chains(scorer: Scorer, fact) -> list[Chain]:
    """The one-hop prompts of ``fact`` whose hop is known for both objects and differs between them."""
    out = []
    for template, hop in pk.CHAINS.get(fact.relation_id, []):
        hop_template, table = pk.HOPS[hop]
        new, true = table.get(fact.target_new), table.get(fact.target_true)
        if new is None or true is None or scorer.first(new) == scorer.first(true):
            continue
        out.append(Chain(template.format(fact.subject), new, hop_template.format(fact.target_new), true))
    return out


def portability(scorer: Scorer, facts: list) -> tuple[dict[int, list[Chain]], dict[int, list[Chain]], Counter]:
    """Per fact (by position), the chains passing the first filter and those passing both, with counts."""
    all_chains = {i: chains(scorer, f) for i, f in enumerate(facts)}
    scorer.score([(c.hop_prompt, c.answer) for cs in all_chains.values() for c in cs]
                 + [(c.prompt, c.true_answer) for cs in all_chains.values() for c in cs])
    first = {i: [c for c in cs if scorer.knows(c.hop_prompt, c.answer) is not None] for i, cs in all_chains.items()}
    both = {i: [c for c in cs if scorer.knows(c.prompt, c.true_answer) is not None] for i, cs in first.items()}
    counts = Counter(candidates=sum(map(len, all_chains.values())), first=sum(map(len, first.values())),
                     both=sum(map(len, both.values())))
    return first, both, counts


# --- the same-subject set ---------------------------------------------------------------------------------------


def new_record(scorer: Scorer, rel: Relation, subject: str, probe: Candidate, neighbours: list[str]):
    """A CounterFact record editing ``subject`` under ``rel`` from the model's answer to a counterfactual object
    (build_facts' rule: another object of the relation, cycling with the subject's index, first token differing
    from every true answer's); None when the relation has no such object or a prompt would name a target."""
    from knowscope.facts import Fact

    trues = answers_of(rel, subject)
    true_firsts = {scorer.first(a) for a in trues}
    objects = {o: ss for o, ss in rel.groups.items()
               if o == probe.answer or (o not in trues and scorer.first(o) not in true_firsts)}
    try:
        target_new = _counterfactual(scorer.model, Relation(rel.relation_id, rel.template, [], [], objects),
                                     probe.answer, rel.groups[probe.answer].index(subject))
    except ValueError:
        return None
    paraphrases = [t.format(subject) for t in rel.paraphrases if not _mentions(t.format(subject), probe.answer)]
    if any(_mentions(p, target_new) for p in [probe.prompt, *paraphrases]):
        return None
    return Fact(subject=subject, prompt=rel.template, target_true=probe.answer, target_new=target_new,
                relation_id=rel.relation_id, paraphrase_prompts=paraphrases,
                neighborhood_prompts=neighbours[:MAX_NEIGHBORS],
                generation_prompts=[t.format(subject) for t in rel.generation])


def same_subject(scorer: Scorer, relations: dict[str, Relation], facts: list, probes: list[list[Candidate]],
                 pools: dict[str, list[Candidate]]) -> list[list]:
    """Per chosen subject (extended-set order), its edits: the original fact, then one or two new records.

    A new record comes from a probe of the subject that may test the original edit; it needs at least
    MIN_NEIGHBORS neighbourhood prompts (its template on other subjects with the same answer, answered right,
    naming no subject that may be edited here). The largest-margin ones are taken, one per relation family,
    mutually independent."""
    options = {f.subject: (f, [p for p in pools[f.subject] if eligible(scorer, f, p)])
               for f, chosen in zip(facts, probes, strict=True) if chosen}
    editable = list(options)
    asks: dict[tuple[str, str], list[str]] = {}
    for subject, (_, opts) in options.items():
        for probe in opts:
            rel = relations[probe.relation_id]
            prompts = dict.fromkeys(rel.template.format(s) for s in rel.groups[probe.answer]
                                    if s != subject and subject not in s)
            asks[(subject, probe.relation_id)] = [q for q in prompts if not any(_names(q, e) for e in editable)]
    scorer.score([(q, p.answer) for subject, (_, opts) in options.items() for p in opts
                  for q in asks[(subject, p.relation_id)]])
    edits = []
    for subject, (fact, opts) in options.items():
        chosen = [fact]
        for probe in sorted(opts, key=lambda c: (-c.margin, c.relation_id)):
            rel_ids = [f.relation_id for f in chosen]
            if len(chosen) > MAX_NEW_EDITS or family(probe.relation_id) in {family(r) for r in rel_ids} \
                    or any(family(probe.relation_id) in pk.DEPENDENT.get(r, ()) or
                           family(r) in pk.DEPENDENT.get(probe.relation_id, ()) for r in rel_ids):
                continue
            neighbours = [q for q in asks[(subject, probe.relation_id)] if scorer.knows(q, probe.answer) is not None]
            record = new_record(scorer, relations[probe.relation_id], subject, probe, neighbours) \
                if len(neighbours) >= MIN_NEIGHBORS else None
            if record is not None:
                chosen.append(record)
        if len(chosen) > 1:
            edits.append(chosen)
    return edits


# --- the build ------------------------------------------------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    """A set's records as build_facts wrote them (any probes this script added before are removed)."""
    return [{k: v for k, v in r.items() if k not in ("portability", "relation_specificity")}
            for r in json.loads(path.read_text(encoding="utf-8"))]


def _with_probes(record: dict, chosen: list[Candidate], port: list[Chain]) -> dict:
    out = dict(record)
    if port:
        out["portability"] = [{"prompt": c.prompt, "ground_truth": c.answer} for c in port]
    if chosen:
        out["relation_specificity"] = [{"prompt": c.prompt, "ground_truth": c.answer, "relation_id": c.relation_id}
                                       for c in chosen]
    return out


def build(model) -> tuple[dict[Path, list], dict]:
    """The three files' contents and the summary figures."""
    from knowscope.facts import Fact, parse_facts
    from knowscope.knowledge import fact_accuracy

    scorer = Scorer(model)
    relations = probe_relations()
    sets = {name: _records(path) for name, path in (("default", DEFAULT_OUT), ("extended", EXTENDED_OUT))}
    facts = {name: parse_facts(records, "counterfact") for name, records in sets.items()}
    subjects = list(dict.fromkeys(f.subject for fs in facts.values() for f in fs))
    pools = subject_pools(scorer, relations, subjects)
    probes = {name: [select_probes(scorer, f, pools[f.subject]) for f in fs] for name, fs in facts.items()}

    edits = same_subject(scorer, relations, facts["extended"], probes["extended"], pools)
    new_facts = [f for subject_edits in edits for f in subject_edits[1:]]
    wrong = {r["prompt"] for r in fact_accuracy(model, new_facts).rows if not r["correct"]}
    if wrong:  # cannot happen with MIN_MARGIN > 0, but a record the model does not know must not be bundled
        log.warning("dropping %d same-subject records the model scores wrong: %s", len(wrong), sorted(wrong))
        edits = [[e[0], *[f for f in e[1:] if f.text not in wrong]] for e in edits]
        edits = [e for e in edits if len(e) > 1]
        new_facts = [f for subject_edits in edits for f in subject_edits[1:]]

    segments = {"default": facts["default"], "extended": facts["extended"], "same_subject": new_facts}
    port = {name: portability(scorer, fs) for name, fs in segments.items()}
    first_total = sum(p[2]["first"] for p in port.values())
    both_total = sum(p[2]["both"] for p in port.values())
    second_filter = first_total - both_total <= first_total / 2
    which = 1 if second_filter else 0
    kept = {name: p[which] for name, p in port.items()}

    out: dict[Path, list] = {}
    for name, path in (("default", DEFAULT_OUT), ("extended", EXTENDED_OUT)):
        out[path] = [_with_probes(r, probes[name][i], kept[name][i]) for i, r in enumerate(sets[name])]
    by_subject = {f.subject: i for i, f in enumerate(facts["extended"])}
    new_port = {id(f): kept["same_subject"][i] for i, f in enumerate(new_facts)}
    ordered = []
    for round_ in range(MAX_NEW_EDITS + 1):
        for subject_edits in edits:
            if round_ < len(subject_edits):
                ordered.append((subject_edits, subject_edits[round_]))
    records = []
    for n, (subject_edits, fact) in enumerate(ordered):
        edited = {family(f.relation_id) for f in subject_edits}
        chosen = select_probes(scorer, fact, pools[fact.subject], excluded=edited - {family(fact.relation_id)})
        if fact is subject_edits[0]:
            i = by_subject[fact.subject]
            record = _with_probes({**sets["extended"][i], "case_id": f"ss-{n}"}, chosen, kept["extended"][i])
        else:
            fact.case_id = f"ss-{n}"
            record = _with_probes(Fact.to_counterfact(fact), chosen, new_port[id(fact)])
        records.append(record)
    out[SAME_SUBJECT_OUT] = records
    summary = {"facts": facts, "probes": probes, "port_counts": {n: p[2] for n, p in port.items()},
               "port_first": {n: p[0] for n, p in port.items()},
               "port_kept": kept, "second_filter": second_filter, "edits": edits, "records": records}
    return out, summary


# --- summary and command line ------------------------------------------------------------------------------------


def _coverage(facts: list, per_fact: list[list]) -> str:
    total = Counter(f.relation_id for f in facts)
    covered = Counter(f.relation_id for f, p in zip(facts, per_fact, strict=True) if p)
    return ", ".join(f"{rel} {covered[rel]}/{n}" for rel, n in total.items())


def report(summary: dict, seconds: float) -> str:
    lines = []
    for name, facts in summary["facts"].items():
        probes = summary["probes"][name]
        covered = sum(1 for p in probes if p)
        used = Counter(c.relation_id for p in probes for c in p)
        copied = sum(1 for p in probes for c in p if _mentions(c.prompt, c.answer))
        lines += [f"{name}: relation specificity on {covered}/{len(facts)} facts ({covered / len(facts):.1%}), "
                  f"{sum(map(len, probes))} probes ({copied} whose answer the prompt names, e.g. a team's city)",
                  f"  coverage by edited relation: {_coverage(facts, probes)}",
                  f"  probes by probe relation: {', '.join(f'{r} {n}' for r, n in used.most_common())}"]
        kept = summary["port_kept"][name]
        with_port = sum(1 for k in kept.values() if k)
        first = summary["port_first"][name]
        lines += [f"  portability on {with_port}/{len(facts)} facts, {sum(map(len, kept.values()))} prompts; "
                  f"by edited relation: {_coverage(facts, [kept[i] for i in range(len(facts))])}",
                  f"  (with the first filter only: {sum(1 for k in first.values() if k)} facts; "
                  f"{_coverage(facts, [first[i] for i in range(len(facts))])})"]
    for name, c in summary["port_counts"].items():
        lines.append(f"portability {name}: {c['candidates']} chains whose hop changes the answer, {c['first']} "
                     f"with the hop known for the new object, {c['both']} of those also answered with the true "
                     "object's hop")
    lines.append("second portability filter " + ("applied" if summary["second_filter"] else
                                                  "NOT applied (it would remove more than half)"))
    edits = summary["edits"]
    by_round = Counter(len(e) for e in edits)
    new = Counter(f.relation_id for e in edits for f in e[1:])
    lines += [f"same_subject: {len(edits)} subjects, {len(summary['records'])} records "
              f"({by_round[2]} subjects with 2 edits, {by_round[3]} with 3)",
              f"  records with relation specificity {sum('relation_specificity' in r for r in summary['records'])}, "
              f"with portability {sum('portability' in r for r in summary['records'])}",
              f"  first edits by relation: {dict(Counter(e[0].relation_id for e in edits))}",
              f"  new records by relation: {', '.join(f'{r} {n}' for r, n in new.most_common())}",
              f"built in {seconds:.0f} s"]
    return "\n".join(lines)


def _text(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"  # as knowscope.facts.write_json_atomic writes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="rebuild in memory and compare with the files; exit 1 on any difference")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from knowscope.facts import write_json_atomic
    from knowscope.models import load_model

    start = time.time()
    out, summary = build(load_model(device="cpu"))
    seconds = time.time() - start
    if args.check:
        differ = [p for p, obj in out.items() if not p.is_file() or p.read_text(encoding="utf-8") != _text(obj)]
        print(report(summary, seconds))
        for path in differ:
            print(f"DIFFERS: {path.relative_to(REPO)} is not what the build makes; rerun scripts/build_probes.py")
        if not differ:
            print(f"identical: {', '.join(str(p.relative_to(REPO)) for p in out)}")
        return 1 if differ else 0
    for path, obj in out.items():
        write_json_atomic(path, obj)
        if path.read_text(encoding="utf-8") != _text(obj):
            raise RuntimeError(f"{path} was not written as expected")
    print(report(summary, seconds))
    print(f"wrote {', '.join(str(p.relative_to(REPO)) for p in out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
