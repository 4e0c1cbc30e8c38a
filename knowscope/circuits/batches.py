"""What a circuit is found on: batches of clean and corrupted prompts, and the metric read from them.

:func:`make_batch` builds a :class:`CircuitBatch` from facts of one relation. Corruptions:
``"swap"`` replaces the subject by another subject of the same token length (the prompt's token
length must not change); ``"noise"`` adds Gaussian noise of scale 3 x the std of the token
embeddings of the bundled facts' subjects at ``hook_embed`` on the subject positions, as in ROME's
causal tracing. Batches are right-padded: attention is causal, so padding after an example's last
token changes nothing the metric reads. :func:`metric_values` is the per-example metric
(``logit_diff`` or ``logprob``) at each example's last token; the edge scores
(:mod:`knowscope.circuits.eap`) and the faithfulness of a circuit are measured in it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.circuits.tracing import embedding_std
from knowscope.facts import Fact, load_bundled_facts
from knowscope.models import Model

METRICS = ("logit_diff", "logprob")
CORRUPTIONS = ("swap", "noise")
CircuitMetric = Literal["logit_diff", "logprob"]
Corruption = Literal["swap", "noise"]
NOISE_MULTIPLIER = 3.0


@dataclass
class CircuitBatch:
    """Clean and corrupted inputs of several facts, with the answers the metric reads.

    ``noise`` (noise corruption) is added at ``hook_embed`` in the corrupted run; for a subject
    swap it is ``None`` and ``corrupted`` holds the swapped prompts' tokens. ``contrast`` is ``-1``
    where no contrast answer exists (only the ``logprob`` metric is then possible).
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    last: Int[Tensor, " batch"]
    answer: Int[Tensor, " batch"]
    contrast: Int[Tensor, " batch"]
    subject_spans: list[tuple[int, int]]
    prompts: list[str]
    corrupted_prompts: list[str]
    answers: list[str]
    contrasts: list[str | None]
    corruption: str
    noise: Float[Tensor, "batch pos d_model"] | None = None
    new_answer: Int[Tensor, " batch"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.clean.shape[0])

    def to(self, device: torch.device | str) -> CircuitBatch:
        for name in ("clean", "corrupted", "last", "answer", "contrast", "noise", "new_answer"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "corrupted_prompts": self.corrupted_prompts,
            "answers": self.answers,
            "contrasts": self.contrasts,
            "subject_spans": [list(s) for s in self.subject_spans],
            "corruption": self.corruption,
            **self.meta,
        }


def as_template(prompt: str, subject: str) -> str:
    """A prompt with ``{}`` for the subject: kept if it has one, else the subject's first occurrence."""
    if "{}" in prompt:
        return prompt
    if not subject or subject not in prompt:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    return prompt.replace(subject, "{}", 1)


def noise_scale(model: Model, facts: Sequence[Fact] | None = None) -> float:
    """ROME's noise level: 3 x the std of the token-embedding entries of many subjects.

    The std is causal tracing's (:func:`knowscope.circuits.tracing.embedding_std`), so circuits and
    traces corrupt with the same noise; ``facts`` defaults to the bundled facts.
    """

    if facts is not None and not facts:
        raise ValueError("no subjects to estimate the embedding std from (the fact list is empty)")
    subjects = None if facts is None else sorted({f.subject for f in facts})
    return NOISE_MULTIPLIER * float(embedding_std(model, subjects))


def _first_token(model: Model, target: str) -> int:
    return model.encode_target(Fact.continuation(target))[0]


def _swap_candidates(model: Model, fact: Fact, length: int, pool: Sequence[Fact]) -> list[Fact]:
    out = []
    seen = set()
    for other in pool:
        if other.subject == fact.subject or other.subject in seen:
            continue
        seen.add(other.subject)
        if int(model.to_tokens(fact.prompt.format(other.subject)).shape[1]) == length:
            out.append(other)
    return out


def make_batch(
    model: Model,
    facts: Sequence[Fact],
    corruption: str = "swap",
    *,
    contrast_subjects: Sequence[str | None] | None = None,
    contrasts: Sequence[str | None] | None = None,
    pool: Sequence[Fact] | None = None,
    target: str = "true",
    scale: float | None = None,
    seed: int = 0,
) -> CircuitBatch:
    """Clean / corrupted token batches for ``facts`` (their filled prompts, BOS prepended).

    Args:
        corruption: ``"swap"`` (another subject of the same token length) or ``"noise"``.
        contrast_subjects: per fact, the subject to swap in (``None`` = pick one from ``pool``:
            preferably a fact of the same relation with a different answer, whose answer then
            becomes the contrast; the first such subject in ``pool`` order, shuffled by ``seed``).
        contrasts: per fact, the contrast answer of the logit difference (default: the swapped-in
            subject's answer if known, else the fact's ``target_new``; ``""`` = none, for ``logprob``).
        pool: facts to draw swap subjects from (default: the bundled facts).
        target: ``"true"`` scores ``target_true``; ``"new"`` scores ``target_new`` (after an edit).
        scale: noise std for ``"noise"`` (default :func:`noise_scale` over the bundled facts).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; valid: {', '.join(CORRUPTIONS)}")
    if target not in ("true", "new"):
        raise ValueError(f"unknown target {target!r}; valid: 'true', 'new'")
    facts = list(facts)
    if not facts:
        raise ValueError("no facts given: a circuit needs at least one fact")
    for name, seq in (("contrast_subjects", contrast_subjects), ("contrasts", contrasts)):
        if seq is not None and len(seq) != len(facts):
            raise ValueError(f"{name} has {len(seq)} entries for {len(facts)} facts")
    rng = random.Random(seed)
    prompts, corrupted_prompts, answers, contrast_texts, spans = [], [], [], [], []
    swapped: list[str | None] = []
    clean_rows, corrupt_rows = [], []
    for i, fact in enumerate(facts):
        text = fact.text
        clean = model.to_tokens(text)[0]
        spans.append(model.subject_span(fact.prompt, fact.subject))
        answer = fact.target_true if target == "true" else fact.target_new
        contrast = contrasts[i] if contrasts is not None else None
        if corruption == "swap":
            other_subject = contrast_subjects[i] if contrast_subjects is not None else None
            if other_subject is None:
                if pool is None:

                    pool = load_bundled_facts()
                shuffled = list(pool)
                rng.shuffle(shuffled)
                cands = _swap_candidates(model, fact, clean.shape[0], shuffled)
                a_id = _first_token(model, answer)
                good = [c for c in cands
                        if c.relation_id == fact.relation_id and _first_token(model, c.target_true) != a_id]
                pick = good[0] if good else (cands[0] if cands else None)
                if pick is None:
                    raise ValueError(
                        f"no other subject in the pool gives a prompt of {clean.shape[0]} tokens for {fact.subject!r}; "
                        "pass a contrast subject of the same token length"
                    )
                other_subject = pick.subject
                if contrast is None and pick in good:
                    contrast = pick.target_true
            if other_subject == fact.subject:
                raise ValueError(f"the contrast subject {other_subject!r} is the subject itself")
            ctext = fact.prompt.format(other_subject)
            corrupt = model.to_tokens(ctext)[0]
            if corrupt.shape[0] != clean.shape[0]:
                raise ValueError(
                    f"clean prompt {text!r} has {clean.shape[0]} tokens but corrupted prompt {ctext!r} has "
                    f"{corrupt.shape[0]}: pick a contrast subject with the same token length as {fact.subject!r}"
                )
        else:
            ctext, corrupt, other_subject = text, clean, None
        swapped.append(other_subject)
        if contrast is None:
            contrast = fact.target_new if target == "true" else fact.target_true
        prompts.append(text)
        corrupted_prompts.append(ctext)
        answers.append(answer)
        contrast_texts.append(contrast)
        clean_rows.append(clean)
        corrupt_rows.append(corrupt)
    width = max(int(r.shape[0]) for r in clean_rows)
    pad = model.pad_token_id

    def stack(rows: list[Tensor]) -> Tensor:
        out = torch.full((len(rows), width), pad, dtype=torch.long)
        for j, r in enumerate(rows):
            out[j, : r.shape[0]] = r.cpu()
        return out

    last = torch.tensor([int(r.shape[0]) - 1 for r in clean_rows])
    answer_ids = torch.tensor([_first_token(model, a) for a in answers])
    contrast_ids = torch.tensor([_first_token(model, c) if c else -1 for c in contrast_texts])
    for a, c, ai, ci in zip(answers, contrast_texts, answer_ids.tolist(), contrast_ids.tolist(), strict=True):
        if ai == ci and ci >= 0:
            raise ValueError(f"answer {a!r} and contrast {c!r} start with the same token; pick another contrast")
    noise = None
    s = None
    if corruption == "noise":
        s = noise_scale(model) if scale is None else float(scale)
        gen = torch.Generator().manual_seed(seed)
        noise = torch.zeros(len(facts), width, model.arch.d_model)
        for j, (a, b) in enumerate(spans):
            noise[j, a:b] = torch.randn(b - a, model.arch.d_model, generator=gen) * s
    new_ids = torch.tensor([_first_token(model, f.target_new) for f in facts])
    batch = CircuitBatch(
        clean=stack(clean_rows),
        corrupted=stack(corrupt_rows),
        last=last,
        answer=answer_ids,
        contrast=contrast_ids,
        subject_spans=spans,
        prompts=prompts,
        corrupted_prompts=corrupted_prompts,
        answers=answers,
        contrasts=contrast_texts,
        corruption=corruption,
        noise=noise,
        new_answer=new_ids,
        meta={"relations": sorted({f.relation_id for f in facts}), "subjects": [f.subject for f in facts],
              "contrast_subjects": swapped,
              "templates": [f.prompt for f in facts], "target": target, "seed": seed, "noise_scale": s},
    )
    return batch.to(model.device)


def metric_values(
    logits: Float[Tensor, "batch pos vocab"], batch: CircuitBatch, metric: str
) -> Float[Tensor, " batch"]:
    """Per-example metric at each example's last token.

    ``logit_diff``: logit of the answer minus logit of the contrast; ``logprob``: log-probability
    of the answer's first token.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, batch.last.to(logits.device)].float()
    ans = batch.answer.to(logits.device)
    if metric == "logit_diff":
        con = batch.contrast.to(logits.device)
        if bool((con < 0).any()):
            raise ValueError("metric 'logit_diff' needs a contrast answer for every fact; "
                             "use 'logprob' or give contrasts")
        return last[rows, ans] - last[rows, con]
    if metric == "logprob":
        return torch.log_softmax(last, dim=-1)[rows, ans]
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
