"""Generation-based scores: what a user of the edited model reads, not what teacher forcing measures.

Teacher-forced accuracy feeds the answer's own tokens back to the model; a user only sees what the
model generates, and the two can differ widely ("The Mirage of Model Editing", 2025). So every
evaluation also decodes greedily a few tokens after each prompt (batched, left-padded, KV cache:
:func:`greedy_continuations`) and scores the text:

* prompts that should follow the edit (rewrite, paraphrase, portability): the continuation **begins
  with the answer**, after :func:`normalize` (case, leading article, leading punctuation and spaces)
  and ending at a word boundary ("Rome" is not the start of "Romeo");
* prompts that should not move (neighbourhood, locality, relation specificity): the first ``k``
  generated tokens are **the unedited model's**, ``k`` the token length of the prompt's answer.

A prompt that should follow the edit is decoded for ``len(answer tokens) + EXTRA_TOKENS`` tokens (room
for a leading article and for the word boundary after the answer); one that should not move, for the
answer's length.

**Decoding starts from the teacher-forced pass.** The teacher-forced scores already hold the argmax after
the prompt and each prefix of the answer; as long as those argmaxes *are* the answer's tokens, they are
exactly the greedy tokens, and the first one that is not is the greedy token there too. So each prompt's
greedy continuation is known up to and including its first mismatch, and only the rest is decoded
(:func:`greedy_from_scores`): a one-token answer that should not move costs no decoding at all.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from knowscope.editing.scoring import _sample_rows
from knowscope.models import Model

#: tokens decoded beyond the answer's own length (a leading article, then the word boundary)
EXTRA_TOKENS = 2
_ARTICLE = re.compile(r"^(the|a|an)\s+")
_LEADING = re.compile(r"^[\s\"'`“”‘’(\[{*_:,;.\-–—]+")


def normalize(text: str) -> str:
    """Lower-case, NFKC, leading spaces / quotes / punctuation and one leading article removed, spaces
    collapsed: the form in which a generated answer is compared with a target."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _LEADING.sub("", text)
    text = _ARTICLE.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def begins_with(continuation: str, answer: str) -> bool:
    """Does the generated ``continuation`` begin with ``answer`` (both :func:`normalize` d), ending at a
    word boundary? An answer that normalises to nothing never matches."""
    cont, ans = normalize(continuation), normalize(answer)
    if not ans or not cont.startswith(ans):
        return False
    return len(cont) == len(ans) or not (cont[len(ans)].isalnum() and ans[-1].isalnum())


def decode_length(answer_ids: Sequence[int], follow: bool = True) -> int:
    """How many tokens to decode for a prompt whose answer has ``answer_ids``: its length, plus
    :data:`EXTRA_TOKENS` for a prompt that should follow the edit (``follow``)."""
    return max(1, len(answer_ids)) + (EXTRA_TOKENS if follow else 0)


def n_tokens(model: Model, answer: str, follow: bool = True) -> int:
    """:func:`decode_length` of the answer text."""
    return decode_length(model.encode_target(answer), follow)


GenKey = tuple[tuple[int, ...], int]  # (BOS-prepended prompt ids, tokens decoded)


def greedy_from_scores(model: Model, items: Sequence[tuple[tuple[int, ...], tuple[int, ...], Sequence[int], int]],
                       batch_size: int = 64) -> dict[GenKey, tuple[int, ...]]:
    """Greedy continuations of ``(prompt ids, answer ids, teacher-forced argmax over the answer, n)``.

    The argmax after the prompt and the answer's first ``j`` tokens is the greedy token ``j`` whenever the
    first ``j`` greedy tokens are the answer's (module docstring): the known prefix runs up to and including
    the first mismatch, and only the tokens after it are decoded (:func:`greedy_continuations`).
    """
    out: dict[GenKey, tuple[int, ...]] = {}
    pending: dict[GenKey, tuple[GenKey, tuple[int, ...]]] = {}
    for prompt, answer, argmax, n in items:
        known: list[int] = []
        for got, want in zip(argmax, answer, strict=False):
            known.append(int(got))
            if int(got) != want:
                break
        if len(known) >= n:
            out[(prompt, n)] = tuple(known[:n])
        else:
            pending[(prompt, n)] = ((prompt + tuple(known), n - len(known)), tuple(known))
    decoded = greedy_continuations(model, [req for req, _ in pending.values()], batch_size=batch_size)
    for key, (req, known) in pending.items():
        out[key] = known + decoded[req]
    return out


def greedy_continuations(model: Model, requests: Sequence[tuple[tuple[int, ...], int]],
                         batch_size: int = 64) -> dict[tuple[tuple[int, ...], int], tuple[int, ...]]:
    """Greedy tokens after each ``(BOS-prepended prompt ids, n)``: ``n`` new token ids.

    Distinct requests are decoded once; prompts are sorted by length and decoded ``batch_size`` at a
    time (left padding, the KV cache where the model's load-time check found it exact), each row to the
    largest ``n`` of its batch and cut to its own.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unique = sorted(dict.fromkeys(requests), key=lambda r: (len(r[0]), r[1]))
    out: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        n_new = max(n for _, n in chunk)
        rows = _sample_rows(model, [list(ids) for ids, _ in chunk], n_new, None, [None] * len(chunk))
        for (ids, n), row in zip(chunk, rows, strict=True):
            out[(ids, n)] = tuple(row[len(ids) : len(ids) + n])
    return out


def decode(model: Model, ids: Sequence[int]) -> str:
    """Generated ids as text (special tokens dropped)."""
    return model.tokenizer.decode(list(ids), skip_special_tokens=True)
