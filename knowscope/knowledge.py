"""What a model knows: top-1 accuracy of a model on facts, with BOS-prepended prompts.

A fact counts as known when the model's greedy next token after the filled prompt is the first
token of ``" " + target_true`` (the convention the bundled facts are built and checked with).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from knowscope.facts import Fact
from knowscope.models import Model


@dataclass
class KnowledgeReport:
    """Per-fact top-1 predictions and the overall accuracy."""

    accuracy: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def by_relation(self) -> dict[str, float]:
        groups: dict[str, list[bool]] = {}
        for r in self.rows:
            groups.setdefault(r["relation_id"], []).append(r["correct"])
        return {k: sum(v) / len(v) for k, v in sorted(groups.items())}

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": len(self.rows), "by_relation": self.by_relation(), "rows": self.rows}


def fact_accuracy(model: Model, facts: Sequence[Fact], batch_size: int = 32) -> KnowledgeReport:
    """Top-1 accuracy of ``model`` on ``facts`` (one batched forward pass per ``batch_size`` facts)."""
    if not facts:
        raise ValueError("no facts to evaluate")
    logits = model.last_logits([f.text for f in facts], batch_size=batch_size)
    probs = torch.softmax(logits, dim=-1)
    rows = []
    for i, fact in enumerate(facts):
        true_id = model.encode_target(fact.true_continuation)[0]
        top_id = int(probs[i].argmax())
        rows.append(
            {
                "case_id": fact.case_id,
                "relation_id": fact.relation_id,
                "prompt": fact.text,
                "target_true": fact.target_true,
                "predicted": model.tokenizer.decode([top_id]),
                "p_true": float(probs[i, true_id]),
                "correct": top_id == true_id,
            }
        )
    acc = sum(r["correct"] for r in rows) / len(rows)
    return KnowledgeReport(accuracy=acc, rows=rows)
