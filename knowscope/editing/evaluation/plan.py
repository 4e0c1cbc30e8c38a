"""What each fact is evaluated on, and which prompts an edit is *supposed* to change.

Every prompt an evaluation reads belongs to one **kind**:

* ``rewrite`` / ``paraphrase`` — the edited fact and its paraphrases (should follow the new target);
* ``neighborhood`` — CounterFact's neighbours: the same relation about *other* subjects with the same
  true object (should keep the true object);
* ``locality`` — EasyEdit's locality pairs (``fact.locality``; without them the neighbourhood prompts
  with the true target), compared with the unedited model's own predictions;
* ``relation_specificity`` — the edited *subject* under *other* relations (KnowEdit's
  Relation_Specificity, RippleEdits' relation specificity): an edit of one fact must leave the
  subject's other facts alone;
* ``portability`` — a one-hop question whose answer follows the new target (KnowEdit / MQuAKE).

**Supposed to change.** In a batch, a sequential run or a same-subject sequence, a specificity prompt
may itself be about an edited fact. Which ones are is decided by (subject, relation), never by the
subject's name alone (:class:`EditedFacts`): a neighbourhood prompt of a fact with relation *r* is
left out when it names a subject edited under *r*; a relation-specificity probe is left out only when
its own (subject, relation) is edited (the same subject edited again under that relation); locality
pairs read from a file, whose relation is unknown, are never left out. Relations compare by id where
both sides have one, else by prompt template.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from knowscope.facts import Fact

#: every prompt kind, in report order
KINDS = ("rewrite", "paraphrase", "neighborhood", "locality", "relation_specificity", "portability")
#: kinds whose answer should follow the edit (generation: the continuation begins with the answer)
FOLLOW_KINDS = ("rewrite", "paraphrase", "portability")
#: kinds whose answer should not move (generation: the continuation is the unedited model's)
KEEP_KINDS = ("neighborhood", "locality", "relation_specificity")


@dataclass(frozen=True)
class EditedFact:
    """One edited (subject, relation): the relation's id where known, and its prompt template."""

    subject: str
    relation_id: str = ""
    template: str = ""

    def same_relation(self, relation_id: str, template: str) -> bool:
        if self.relation_id and relation_id:
            return self.relation_id == relation_id
        return bool(self.template) and self.template == template


@dataclass
class EditedFacts:
    """The (subject, relation) pairs that are edited, and the rule that says what they change."""

    edits: list[EditedFact] = field(default_factory=list)

    @classmethod
    def of(cls, facts: Iterable[Fact | dict[str, Any] | EditedFact]) -> EditedFacts:
        """From facts, edit requests as stored in an EditResult (``subject``, ``prompt``, ``relation_id``)
        or :class:`EditedFact` s; duplicates kept once."""
        out: dict[EditedFact, None] = {}
        for item in facts:
            if isinstance(item, EditedFact):
                out[item] = None
            elif isinstance(item, Fact):
                out[EditedFact(item.subject, item.relation_id, item.prompt)] = None
            elif isinstance(item, dict):
                req = item.get("requested_rewrite") or item
                sub = req.get("subject")
                if isinstance(sub, str) and sub.strip():
                    out[EditedFact(sub, str(req.get("relation_id") or ""), str(req.get("prompt") or ""))] = None
        return cls(list(out))

    def __post_init__(self) -> None:
        by_subject: dict[str, list[EditedFact]] = {}
        for e in self.edits:
            by_subject.setdefault(e.subject.strip(), []).append(e)
        self._by_subject = by_subject
        subs = sorted(by_subject, key=len, reverse=True)
        self._pattern = (re.compile("|".join(rf"(?<!\w){re.escape(s)}(?!\w)" for s in subs)) if subs else None)

    def subjects_named(self, prompt: str) -> list[str]:
        """Edited subjects named in ``prompt`` as whole words / phrases (longest first, no overlaps)."""
        return [m.group(0) for m in self._pattern.finditer(prompt)] if self._pattern else []

    def names_edited(self, prompt: str, relation_id: str, template: str) -> bool:
        """Does ``prompt`` name a subject edited under this relation (so the edit is meant to change it)?"""
        return any(e.same_relation(relation_id, template)
                   for s in self.subjects_named(prompt) for e in self._by_subject.get(s, []))

    def is_edited(self, subject: str, relation_id: str, template: str = "") -> bool:
        """Is (``subject``, relation) itself edited?"""
        return any(e.same_relation(relation_id, template) for e in self._by_subject.get(subject.strip(), []))


@dataclass(frozen=True)
class Prompt:
    """One prompt of one kind of one fact: its answer (the continuation scored) and, for the CounterFact
    protocol, the pair of continuations compared (``new``, ``true``); ``kept`` is False when an edit is
    supposed to change it (left out of the specificity scores, kept in the ``*_all`` figures)."""

    kind: str
    prompt: str
    answer: str
    new: str | None = None
    true: str | None = None
    kept: bool = True


def locality_pairs(fact: Fact) -> list[tuple[str, str]]:
    """EasyEdit locality pairs of a fact: its ``locality`` list, else neighbourhood prompts + true target."""
    if fact.locality:
        return [(p, Fact.continuation(a)) for p, a in fact.locality]
    return [(p, fact.true_continuation) for p in fact.neighborhood_prompts]


def fact_prompts(fact: Fact, edited: EditedFacts) -> list[Prompt]:
    """Every prompt of ``fact`` by kind (:data:`KINDS`), with the supposed-to-change rule applied."""
    new, true = fact.new_continuation, fact.true_continuation
    rel, tpl = fact.relation_id, fact.prompt
    out = [Prompt("rewrite", fact.text, new, new, true)]
    out += [Prompt("paraphrase", p, new, new, true) for p in fact.paraphrase_prompts]
    out += [Prompt("neighborhood", p, true, new, true, kept=not edited.names_edited(p, rel, tpl))
            for p in fact.neighborhood_prompts]
    if fact.locality:  # from a file: relation unknown, never left out
        out += [Prompt("locality", p, a) for p, a in locality_pairs(fact)]
    else:
        out += [Prompt("locality", p, a, kept=not edited.names_edited(p, rel, tpl)) for p, a in locality_pairs(fact)]
    for probe in fact.relation_specificity:
        kept = not (probe.relation_id and edited.is_edited(fact.subject, probe.relation_id))
        out.append(Prompt("relation_specificity", probe.prompt, Fact.continuation(probe.answer), new,
                          Fact.continuation(probe.answer), kept=kept))
    out += [Prompt("portability", p, Fact.continuation(a)) for p, a in fact.portability]
    return out


def plan(facts: Sequence[Fact], edited: EditedFacts) -> list[list[Prompt]]:
    """:func:`fact_prompts` of each fact."""
    return [fact_prompts(f, edited) for f in facts]
