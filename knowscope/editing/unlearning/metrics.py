"""What an unlearned model now says: forgetting, retention and the quality of its language.

All knowledge checks read **greedy generations** (what a user sees), decoded ``len(answer) + 6`` tokens
after each prompt, with the project's :func:`~knowscope.editing.evaluation.generation.begins_with` /
:func:`normalize` conventions:

* ``gen_forget``: share of forget prompts whose continuation no longer **begins with** the answer (the
  acceptance check "generation no longer gives the fact"); ``gen_paraphrase_forget`` the same on the forget
  items' paraphrases (never trained on); ``gen_retain``: share of retain prompts whose continuation still
  begins with its answer, also per kind (``gen_retain_relation_specificity``, ``gen_retain_neighborhood``).
* KnowUnDo's **unlearn / retention success**: the share of forget prompts whose continuation does not
  *contain* the answer anywhere, and of retain prompts whose continuation contains it (stricter than
  begins-with for forgetting: "Mexico's language is ... well, Spanish" is not forgotten).
* ReLearn's **Knowledge Forgetting Rate** and **Knowledge Retention Rate**. ReLearn counts an item as
  forgotten when its knowledge score falls by more than a margin or the response no longer entails the
  answer, and as retained when the score stays within the margin and the response still entails it. These
  machines have no NLI model, so here "entails" is "the continuation contains the answer" and the knowledge
  score is the teacher-forced probability of the answer (per-token geometric mean) relative to the unedited
  model's: KFR = mean[drop > ``margin`` or not contained], KRR = mean[drop < ``margin`` and contained],
  drop = 1 − p_after / p_before, ``margin`` 0.5.
* The **linguistic score**: ``fluency`` is ROME's weighted bi-/tri-gram entropy of sampled generations
  (top-5, ``gen_len`` tokens) from the forget and retain prompts, ``fluency_ratio`` its ratio to the unedited
  model's on the same prompts and seeds; ``relevance`` is the share of forgotten prompts whose continuation
  now begins with *another* answer of the same relation found in the set (a plausible answer of the right
  kind rather than noise; ``None`` where items carry no relation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from knowscope.editing.evaluation.generation import begins_with, decode, greedy_continuations, normalize
from knowscope.editing.scoring import generate_texts, ngram_entropy
from knowscope.editing.unlearning.data import UnlearnItem, UnlearnSet
from knowscope.editing.unlearning.train import answer_logprobs, encode, sequence_logprob
from knowscope.models import Model
from knowscope.results import load_dir, register, save_dir

EXTRA_DECODE = 6
MARGIN = 0.5
KEYS = ("gen_forget", "gen_paraphrase_forget", "gen_retain", "gen_retain_relation_specificity",
        "gen_retain_neighborhood", "knowundo_unlearn_success", "knowundo_retention_success", "kfr", "krr",
        "fluency", "fluency_before", "fluency_ratio", "relevance")


def contains(continuation: str, answer: str) -> bool:
    """Does the answer (normalised) occur in the continuation at word boundaries?"""
    cont, ans = f" {normalize(continuation)} ", normalize(answer)
    if not ans:
        return False
    i = cont.find(ans)
    while i >= 0:
        if not cont[i - 1].isalnum() and not cont[i + len(ans)].isalnum():
            return True
        i = cont.find(ans, i + 1)
    return False


def _mean(values: Sequence[float | bool]) -> float | None:
    return sum(float(v) for v in values) / len(values) if values else None


@torch.no_grad()
def answer_probs(model: Model, items: Sequence[UnlearnItem], batch: int = 32) -> list[float]:
    """Teacher-forced probability of each item's answer (per-token geometric mean)."""
    pairs = encode(model, items)
    out: list[float] = []
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        lp = sequence_logprob(answer_logprobs(model, chunk), chunk)
        out.extend(math.exp(float(v) / len(a)) for v, (_, a) in zip(lp, chunk, strict=True))
    return out


def _fluency_prompts(uset: UnlearnSet, n: int) -> list[str]:
    return [i.prompt for i in uset.forget[:n]] + [i.prompt for i in uset.retain[:n]]


@dataclass
class UnlearnReference:
    """The unedited model's answer probabilities and fluency, taken once before unlearning."""

    forget_probs: list[float]
    retain_probs: list[float]
    fluency: float | None
    settings: dict[str, Any] = field(default_factory=dict)


def unlearn_reference(model: Model, uset: UnlearnSet, fluency: bool = True, gen_len: int = 40,
                      fluency_prompts: int = 6, seed: int = 0) -> UnlearnReference:
    """What :func:`evaluate_unlearning` compares with: measure it on the model before unlearning."""
    flu = None
    if fluency:
        texts = generate_texts(model, _fluency_prompts(uset, fluency_prompts), max_out_len=gen_len, seed=seed)
        flu = sum(ngram_entropy(t) for t in texts) / len(texts)
    return UnlearnReference(answer_probs(model, uset.forget), answer_probs(model, uset.retain), flu,
                            {"gen_len": gen_len, "fluency_prompts": fluency_prompts, "seed": seed})


@dataclass
class UnlearnMetrics:
    """Scores of an unlearned model on a forget / retain set (module docstring); ``None`` = not measured."""

    values: dict[str, float | None]
    per_item: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float | None:
        return self.values[key]

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "per_item": self.per_item, "notes": self.notes}

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_dir(path, "unlearn_metrics", self.to_dict(), {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UnlearnMetrics:
        meta, _ = load_dir(path, "unlearn_metrics")
        return cls(meta["values"], meta.get("per_item", []), meta.get("notes", {}))

    def summary(self) -> str:
        def f(k: str) -> str:
            v = self.values.get(k)
            return "-" if v is None else f"{v:.3f}"

        return (f"forget (generation) {f('gen_forget')}  paraphrases {f('gen_paraphrase_forget')}  "
                f"retain {f('gen_retain')}\nKnowUnDo unlearn success {f('knowundo_unlearn_success')}  retention "
                f"success {f('knowundo_retention_success')}  ReLearn KFR {f('kfr')}  KRR {f('krr')}\n"
                f"fluency {f('fluency')} (ratio to unedited {f('fluency_ratio')})  relevance {f('relevance')}")


def relation_answers(items: Sequence[UnlearnItem]) -> dict[str, set[str]]:
    """Per relation id, the answers ``items`` give under it (items without a relation are left out)."""
    out: dict[str, set[str]] = {}
    for it in items:
        if it.relation_id:
            out.setdefault(it.relation_id, set()).add(it.answer)
    return out


def evaluate_unlearning(model: Model, uset: UnlearnSet, reference: UnlearnReference | None = None,
                        fluency: bool = True) -> UnlearnMetrics:
    """Score the model as it is now on ``uset`` (``reference``: the unedited model's, for KFR / KRR and the
    fluency ratio; without it those are ``None``)."""
    items = [("forget", i, it.prompt) for i, it in enumerate(uset.forget)]
    items += [("paraphrase", i, p) for i, it in enumerate(uset.forget) for p in it.paraphrases]
    items += [("retain", i, it.prompt) for i, it in enumerate(uset.retain)]
    owner = {"forget": uset.forget, "paraphrase": uset.forget, "retain": uset.retain}
    reqs = []
    for kind, i, prompt in items:
        it = owner[kind][i]
        ids = tuple(int(t) for t in model.to_tokens(prompt)[0])
        reqs.append((ids, len(model.encode_target(it.continuation)) + EXTRA_DECODE))
    conts = greedy_continuations(model, reqs)
    texts = [decode(model, conts[r]) for r in reqs]
    p_forget, p_retain = answer_probs(model, uset.forget), answer_probs(model, uset.retain)
    vocab = relation_answers([*uset.forget, *uset.retain])
    rows, gen = [], {"forget": [], "paraphrase": [], "retain": []}
    unlearn_ok, retain_ok, kfr, krr, relevant = [], [], [], [], []
    by_kind: dict[str, list[bool]] = {}
    for (kind, i, prompt), text in zip(items, texts, strict=True):
        it = owner[kind][i]
        starts, has = begins_with(text, it.answer), contains(text, it.answer)
        row: dict[str, Any] = {"set": kind, "index": i, "prompt": prompt, "answer": it.answer, "continuation": text,
                               "begins_with_answer": starts, "contains_answer": has}
        if kind == "forget":
            gen["forget"].append(not starts)
            unlearn_ok.append(not has)
            row["p_answer"] = p_forget[i]
            if reference is not None:
                drop = 1 - p_forget[i] / max(reference.forget_probs[i], 1e-30)
                kfr.append(drop > MARGIN or not has)
                row["p_answer_before"] = reference.forget_probs[i]
            others = vocab.get(it.relation_id, set()) - {it.answer}
            if not starts and others:
                relevant.append(any(begins_with(text, o) for o in others))
        elif kind == "paraphrase":
            gen["paraphrase"].append(not starts)
        else:
            gen["retain"].append(starts)
            by_kind.setdefault(it.kind, []).append(starts)
            retain_ok.append(has)
            row["p_answer"] = p_retain[i]
            row["kind"] = it.kind
            if reference is not None:
                drop = 1 - p_retain[i] / max(reference.retain_probs[i], 1e-30)
                krr.append(drop < MARGIN and has)
                row["p_answer_before"] = reference.retain_probs[i]
        rows.append(row)
    values: dict[str, float | None] = dict.fromkeys(KEYS)
    values.update(gen_forget=_mean(gen["forget"]), gen_paraphrase_forget=_mean(gen["paraphrase"]),
                  gen_retain=_mean(gen["retain"]),
                  gen_retain_relation_specificity=_mean(by_kind.get("relation_specificity", [])),
                  gen_retain_neighborhood=_mean(by_kind.get("neighborhood", [])),
                  knowundo_unlearn_success=_mean(unlearn_ok), knowundo_retention_success=_mean(retain_ok),
                  kfr=_mean(kfr), krr=_mean(krr), relevance=_mean(relevant))
    notes: dict[str, Any] = {"n_forget": len(uset.forget), "n_retain": len(uset.retain),
                             "n_paraphrases": len(gen["paraphrase"]), "decode_extra_tokens": EXTRA_DECODE,
                             "margin": MARGIN}
    if fluency:
        settings = reference.settings if reference is not None else {"gen_len": 40, "fluency_prompts": 6, "seed": 0}
        texts = generate_texts(model, _fluency_prompts(uset, settings["fluency_prompts"]),
                               max_out_len=settings["gen_len"], seed=settings["seed"])
        values["fluency"] = sum(ngram_entropy(t) for t in texts) / len(texts)
        if reference is not None and reference.fluency:
            values["fluency_before"] = reference.fluency
            values["fluency_ratio"] = values["fluency"] / reference.fluency
        notes["fluency"] = settings
        notes["fluency_examples"] = texts[:3]
    return UnlearnMetrics(values, rows, notes)


def _headline(meta: dict[str, Any]) -> str:
    v = meta.get("values", {})
    return f"forget {v.get('gen_forget')}, retain {v.get('gen_retain')}"


register("unlearn_metrics", UnlearnMetrics.load, _headline)
