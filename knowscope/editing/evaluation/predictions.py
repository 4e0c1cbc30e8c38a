"""Before-vs-after predictions of an edited fact, prompt by prompt: what the model generates and how likely
each answer is, on its rewrite prompt, paraphrases, neighbours, the subject's other relations and the
one-hop questions, now and on the unedited weights (for notebooks, the demo and the viewer)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knowscope.editing.evaluation.generation import decode, decode_length, greedy_from_scores
from knowscope.editing.evaluation.plan import EditedFacts, fact_prompts
from knowscope.editing.scoring import _pair_ids, score_continuations
from knowscope.editing.session import EditSession
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.results import load_dir, register, save_dir

logger = logging.getLogger(__name__)


@torch.no_grad()
def prediction_table(
    model: Model, fact: Fact, session: EditSession | None = None, k: int = 1
) -> list[dict[str, Any]]:
    """Every prompt of the fact by kind, what the model now says and, with a ``session``, said unedited.

    One row per prompt: ``kind`` (rewrite, paraphrase, neighborhood, relation_specificity,
    portability), ``prompt``, ``answer`` (what it should answer now), ``after`` / ``before``: the greedy
    continuation (the answer's length + 2 tokens; with ``k > 1`` the top-``k`` next tokens instead), and
    ``p_answer_after`` / ``p_answer_before``: the answer's probability (ROME's mean-token form); for the
    kinds scored CounterFact-style also ``p_true_*`` and ``p_new_*``. For notebooks, demos and the viewer.
    """
    prompts = [p for p in fact_prompts(fact, EditedFacts()) if p.kind != "locality" or fact.locality]

    def measure() -> list[dict[str, Any]]:
        # one teacher-forced pass; the greedy text is read from it up to where it leaves the answer
        pairs = list(dict.fromkeys((p.prompt, c) for p in prompts for c in (p.answer, p.new, p.true) if c))
        scores = dict(zip(pairs, score_continuations(model, pairs), strict=True))
        keys = [_pair_ids(model, p.prompt, p.answer) for p in prompts]
        gen_keys = [(ids, decode_length(ans)) for ids, ans in keys]
        gens = greedy_from_scores(model, [(ids, ans, scores[(p.prompt, p.answer)].argmax.tolist(), n)
                                          for p, (ids, ans), (_, n) in zip(prompts, keys, gen_keys, strict=True)]
                                  ) if k == 1 else {}
        top = model.last_logits([p.prompt for p in prompts]).topk(k, dim=-1).indices if k > 1 else None
        out = []
        for i, p in enumerate(prompts):
            row: dict[str, Any] = {}
            if top is not None:
                row["text"] = [model.tokenizer.decode([int(t)]) for t in top[i]]
            else:
                row["text"] = decode(model, gens[gen_keys[i]])
            row["p_answer"] = scores[(p.prompt, p.answer)].prob
            if p.new is not None:
                row["p_true"], row["p_new"] = scores[(p.prompt, p.true)].prob, scores[(p.prompt, p.new)].prob
            out.append(row)
        return out

    after = measure()
    before = None
    if session is not None:
        with session.unedited():
            before = measure()
    rows = []
    for j, p in enumerate(prompts):
        row: dict[str, Any] = {"kind": p.kind, "prompt": p.prompt, "answer": p.answer.strip()}
        for when, got in (("before", before), ("after", after)):
            if got is None:
                continue
            row[when] = got[j]["text"]
            for name in ("p_answer", "p_true", "p_new"):
                if name in got[j]:
                    row[f"{name}_{when}"] = round(got[j][name], 4)
        rows.append(row)
    return rows


@dataclass
class PredictionTable:
    """The before / after predictions of :func:`prediction_table` for one fact, as a result that saves.

    ``rows`` are :func:`prediction_table`'s rows; ``fact`` the edited fact's fields (subject,
    prompt, targets). The viewer shows a saved table without running the model.
    """

    fact: dict[str, Any]
    rows: list[dict[str, Any]]

    @classmethod
    def compute(cls, model: Model, fact: Fact, session: EditSession | None = None, k: int = 1) -> PredictionTable:
        return cls(fact={"subject": fact.subject, "prompt": fact.prompt, "target_true": fact.target_true,
                         "target_new": fact.target_new},
                   rows=prediction_table(model, fact, session, k=k))

    def changed(self) -> dict[str, float]:
        """Share of prompts of each kind whose top prediction changed."""
        out: dict[str, list[bool]] = {}
        for r in self.rows:
            if "before" in r:
                out.setdefault(r["kind"], []).append(r["before"] != r["after"])
        return {k: sum(v) / len(v) for k, v in out.items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_dir(path, "predictions", {"fact": self.fact, "rows": self.rows}, {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PredictionTable:
        meta, _ = load_dir(path, "predictions")
        return cls(fact=dict(meta["fact"]), rows=list(meta["rows"]))


def _predictions_headline(m: dict[str, Any]) -> str:
    f = m.get("fact") or {}
    return f"{f.get('subject')}: {f.get('target_true')!r} -> {f.get('target_new')!r}, {len(m.get('rows', []))} prompts"


register("predictions", PredictionTable.load, _predictions_headline)
