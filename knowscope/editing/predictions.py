"""Before-vs-after predictions of an edited fact: the top tokens on its rewrite prompt, paraphrases and
neighbours, now and on the unedited weights (for notebooks, the demo and the viewer)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from knowscope.editing.session import EditSession
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.results import load_dir, register, save_dir

logger = logging.getLogger(__name__)


@torch.no_grad()
def prediction_table(
    model: Model, fact: Fact, session: EditSession | None = None, k: int = 1
) -> list[dict[str, Any]]:
    """Top-``k`` next tokens on the fact's rewrite prompt, paraphrases and neighbours, now and unedited.

    One row per prompt: ``kind`` (rewrite / paraphrase / neighborhood), ``prompt``, ``after`` (the
    model as it is) and, with a ``session``, ``before`` (the unedited model). For notebooks and demos.
    """
    prompts = [("rewrite", fact.text)]
    prompts += [("paraphrase", p) for p in fact.paraphrase_prompts]
    prompts += [("neighborhood", p) for p in fact.neighborhood_prompts]
    texts = [p for _, p in prompts]

    def top(logits: Tensor) -> list[list[str]]:
        idx = logits.topk(k, dim=-1).indices
        return [[model.tokenizer.decode([int(t)]) for t in row] for row in idx]

    after = top(model.last_logits(texts))
    before = None
    if session is not None:
        with session.unedited():
            before = top(model.last_logits(texts))
    rows = []
    for j, (kind, prompt) in enumerate(prompts):
        row: dict[str, Any] = {"kind": kind, "prompt": prompt}
        if before is not None:
            row["before"] = before[j] if k > 1 else before[j][0]
        row["after"] = after[j] if k > 1 else after[j][0]
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
