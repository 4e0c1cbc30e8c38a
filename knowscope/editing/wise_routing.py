"""WISE's sequence-level router: one routing decision per input sequence, as in the WISE paper and
EasyEdit's ``WISEAdapter``, instead of one per position.

A memory's score on a sequence is its activation score ``||D a||`` reduced over the sequence's real
positions (BOS included, padding excluded): their **mean**, or their **maximum** when the sequence has
more than :data:`LONG_SEQUENCE` positions (EasyEdit's rule at inference: a long input's mean would be
diluted by text unrelated to any edit). The sequence goes to the memory whose score beats both its
threshold and the scores of the memories considered before it (the current shard first, then the stored
shards in order: EasyEdit's retrieval loop), else to the main weights; the chosen memory's output is used
at every position of the sequence.

**One decision per sequence, also under incremental decoding.** The forward hooks see one pass at a
time, so :class:`SequenceRouter` reads each pass's input ids where the embedding runs and keeps, per
batch, the previous pass's ids and decision. A pass continues the previous one when it has one position
(decoding with a KV cache) or when each of its rows begins with the previous pass's row (decoding without
a cache, the whole sequence again): it keeps the previous decision. Any other pass is a new batch of
sequences and is decided on its own positions. So a generation is routed by its prompt, and the tokens it
generates never change that decision (EasyEdit decides each cached step on the one new token alone).
A pass that does not run the embedding (a forward started at a block) has no ids: it is decided on all of
its positions, and kept by nothing.

Training under this router (:func:`margin_scores`, ``knowscope.editing.wise``) differs from EasyEdit in
small ways, on purpose: a row's score is over its real positions (EasyEdit's padded batch averages its
pads in); a teacher-forced row is BOS, template, prompt and the target but its last token (the input the
loss reads; EasyEdit's row holds the whole target); the recorded score is measured after the last step
(EasyEdit's at the last forward, before that step). The score is ``||D a||`` in both routers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from knowscope.editing.memory import Route, value_inputs

#: sequences longer than this are scored by their highest position, shorter ones by the mean
LONG_SEQUENCE = 100


def reduce_positions(score: Float[Tensor, "m batch pos"],
                     real: Bool[Tensor, "batch pos"]) -> Float[Tensor, "m batch"]:
    """Each memory's score per sequence: the mean over the real positions, or their max past
    :data:`LONG_SEQUENCE` positions."""
    n = real.sum(dim=-1)
    mean = (score * real).sum(dim=-1) / n.clamp(min=1)
    top = score.masked_fill(~real, float("-inf")).amax(dim=-1)
    return torch.where(n > LONG_SEQUENCE, top, mean)


def pick_memory(seq_score: Float[Tensor, "m batch"], thresholds: Float[Tensor, " m"]) -> Int[Tensor, " batch"]:
    """The memory each sequence goes to (-1: the main weights). Memories are ordered stored shards first,
    the current shard last; the current shard is considered first, then each stored shard takes the
    sequence when it scores above its own threshold and above the best score so far."""
    m = seq_score.shape[0]
    current = seq_score[-1]
    choice = torch.where(current > thresholds[-1], m - 1, -1)
    best = current.clone()
    for i in range(m - 1):
        take = (seq_score[i] > best) & (seq_score[i] > thresholds[i])
        choice = torch.where(take, i, choice)
        best = torch.where(take, seq_score[i], best)
    return choice


def real_positions(ids: Int[Tensor, "batch pos"], pad_id: int, bos_id: int | None) -> Bool[Tensor, "batch pos"]:
    """Which positions hold a token of the sequence rather than padding (left or right). Where the pad id
    is also the BOS id, the pad just before a row's first other token is its BOS and counts."""
    real = ids != pad_id
    if bos_id is not None and bos_id == pad_id:
        first = real.int().argmax(dim=-1)
        rows = torch.arange(ids.shape[0], device=ids.device)
        has = real.any(dim=-1) & (first > 0)
        real[rows[has], first[has] - 1] = True
        none = ~real.any(dim=-1)  # only pads: a lone BOS
        real[none, 0] = True
    return real


class SequenceRouter:
    """Per-pass state of the sequence router: the ids the embedding saw in this pass (which positions are
    real, whether the pass continues the previous one) and the previous pass's ids and decision."""

    def __init__(self, pad_id: int, bos_id: int | None) -> None:
        self.pad_id, self.bos_id = int(pad_id), bos_id
        self._pass: tuple[str, Tensor] | None = None  # ("new", real [b, p]) or ("keep", choice [b])
        self._prev: tuple[Tensor, Tensor | None] | None = None  # (context ids [b, ctx], choice [b] or None)

    def reset(self) -> None:
        self._pass = self._prev = None

    def read_ids(self, ids: Int[Tensor, "batch pos"]) -> None:
        """Called where the embedding runs, before the memory's layer."""
        prev = self._prev
        if prev is not None and prev[1] is not None and prev[0].shape[0] == ids.shape[0] \
                and _continues(ids, prev[0]):
            context = torch.cat([prev[0], ids], dim=1) if ids.shape[1] == 1 else ids
            self._pass = ("keep", prev[1])
            self._prev = (context, prev[1])
            return
        self._pass = ("new", real_positions(ids, self.pad_id, self.bos_id))
        self._prev = (ids, None)

    def decide(self, score: Float[Tensor, "m batch pos"], thresholds: Float[Tensor, " m"]) -> Int[Tensor, " batch"]:
        """The memory of each sequence in this pass (-1: the main weights)."""
        seen, self._pass = self._pass, None
        batch, pos = score.shape[1], score.shape[2]
        if seen is not None and seen[0] == "keep" and seen[1].shape[0] == batch:
            return seen[1]
        fits = seen is not None and seen[0] == "new" and tuple(seen[1].shape) == (batch, pos)
        real = seen[1] if fits else torch.ones(batch, pos, dtype=torch.bool, device=score.device)
        choice = pick_memory(reduce_positions(score, real.to(score.device)), thresholds)
        if fits and self._prev is not None:
            self._prev = (self._prev[0], choice)
        return choice


def _continues(ids: Tensor, context: Tensor) -> bool:
    if ids.shape[1] == 1:
        return True
    n = context.shape[1]
    return ids.shape[1] > n and bool(torch.equal(ids[:, :n], context.to(ids.device)))


def margin_scores(score: Float[Tensor, "rows pos"], real: Tensor, n_edit: int, r: Tensor, p: Tensor,
                  irr_r: Tensor, irr_p: Tensor, routing: str) -> tuple[Tensor, Tensor]:
    """The scores WISE's margins act on: per edit position / irrelevant position (``"position"``), or per
    edit row / irrelevant row, each reduced over its sequence as the router does (``"sequence"``)."""
    if routing == "sequence":
        seq = reduce_positions(score[None], real)[0]
        return seq[:n_edit], seq[n_edit:]
    return score[r, p], score[irr_r, irr_p]


@torch.no_grad()
def sequence_routes(memory: Any, prompts: Sequence[str]) -> list[Route]:
    """A WISE memory's routing of each prompt as one sequence: its sequence score against the threshold
    of the memory that wins it (or, when none does, of the best-scoring one), at its last position."""
    out = []
    thr = memory.thresholds()
    for p, a in zip(prompts, value_inputs(memory.model, memory.layer, prompts), strict=True):
        score, _ = memory._all_scores(a)
        seq = reduce_positions(score[:, None], torch.ones(1, a.shape[0], dtype=torch.bool, device=a.device))[:, 0]
        choice = int(pick_memory(seq[:, None], thr)[0]) if memory.n_edits else -1
        best = choice if choice >= 0 else int((seq / thr).argmax())
        name = f"wise[shard {best}]" if best < len(memory.shards) else "wise[current]"
        out.append(Route(p, name if choice >= 0 else "main", float(seq[best]), float(thr[best]), choice >= 0,
                         a.shape[0] - 1, memory.model.to_str_tokens(p)[-1]))
    return out
