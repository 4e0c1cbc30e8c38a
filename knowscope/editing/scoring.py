"""Scoring text under a model: teacher-forced token scores of (prompt, continuation) pairs, batched
and exact for causal models; ROME's fluency (generated text and its weighted n-gram entropy)."""

from __future__ import annotations

import inspect
import logging
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.compat import cache_keyword
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.models.blocks import additive_mask, block_input, final_logits, run_block, supports_block_runs

logger = logging.getLogger(__name__)


# ROME's generation-entropy weights for the 2- and 3-gram entropies
_NGRAM_WEIGHTS = {2: 2 / 3, 3: 4 / 3}


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of one continuation after one prompt (BOS-prepended prompt)."""

    target: tuple[int, ...]
    logprobs: Float[Tensor, " n_target"]
    argmax: Int[Tensor, " n_target"]

    @property
    def mean_nll(self) -> float:
        return float(-self.logprobs.mean())

    @property
    def prob(self) -> float:
        """ROME's continuation probability: ``exp(-mean token NLL)``."""
        return math.exp(-self.mean_nll)

    @property
    def token_acc(self) -> float:
        """EasyEdit's token accuracy: share of target tokens that are the argmax prediction."""
        return float((self.argmax == torch.tensor(self.target)).float().mean())


def _pair_ids(model: Model, prompt: str, continuation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    prompt_ids = tuple(int(t) for t in model.to_tokens(prompt)[0])
    return prompt_ids, tuple(model.encode_target(continuation))


def score_continuations(
    model: Model, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> list[TokenScores]:
    """Teacher-forced log-probabilities and argmax predictions of each ``(prompt, continuation)``.

    The sequence is the BOS-prepended prompt tokens followed by the continuation's tokens (tokenized
    on its own, without BOS). Rows are right-padded and run ``batch_size`` at a time; identical
    pairs are scored once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [_pair_ids(model, p, c) for p, c in pairs]
    unique = list(dict.fromkeys(encoded))
    scored = _score_ids(model, unique, batch_size)
    return [scored[e] for e in encoded]


Seq = tuple[tuple[int, ...], tuple[int, ...]]  # (BOS-prepended prompt ids, continuation ids)

#: scoring modes: ``"packed"`` runs each prompt once with all its continuations packed behind it as
#: a tree (each continuation attends to the prompt and to itself only, at the positions it would
#: have alone) and computes logits only where a score reads them; ``"rows"`` runs one padded row per
#: distinct input with logits everywhere. Packed is used where, checked once per model on the first
#: call, it gives the rows' scores (rotary models whose blocks run alone); otherwise rows.
SCORE_MODES = ("packed", "rows")


def _score_ids(model: Model, seqs: Sequence[Seq], batch_size: int, mode: str | None = None) -> dict[Seq, TokenScores]:
    """Scores of each ``(prompt, continuation)``, by ``mode`` (default: the model's checked mode)."""
    if mode is not None and mode not in SCORE_MODES:
        raise ValueError(f"score mode must be one of {SCORE_MODES}, got {mode!r}")
    seqs = list(seqs)
    if not seqs:
        return {}
    if mode is None:
        mode = model.compat.score_mode
        if mode is None:
            mode = model.compat.score_mode = _check_packed(model, seqs[:8], batch_size)
    memory = getattr(model, "_side_memory", None)
    if mode == "packed" and memory is not None and not getattr(memory, "position_local", True):
        mode = "rows"  # the memory routes a position by the positions before it: one prompt per row
    if mode == "packed":
        return _score_packed(model, seqs, batch_size)
    return _score_rows(model, seqs, batch_size)


def _check_packed(model: Model, probe: Sequence[Seq], batch_size: int) -> str:
    """``"packed"`` if packed scoring reproduces the rows' log-probabilities (1e-4) and argmaxes on
    ``probe``, else ``"rows"`` (with the reason logged)."""
    if model.arch.positional != "rotary" or not supports_block_runs(model):
        return "rows"
    # two multi-token continuations sharing a prompt, so the check covers the tree mask even when the
    # caller's first sequences all have one-token continuations (those pack like plain rows)
    prompt = probe[0][0]
    body = list(prompt[1:]) or list(prompt)
    probe = [*probe, (prompt, tuple((body * 3)[:3])), (prompt, tuple((body[::-1] * 2)[:2]))]
    try:
        want = _score_rows(model, probe, batch_size)
        got = _score_packed(model, probe, batch_size)
        err = max(float((want[k].logprobs - got[k].logprobs).abs().max()) for k in want)
        same = all(torch.equal(want[k].argmax, got[k].argmax) for k in want)
    except Exception as exc:  # noqa: BLE001 - a packed pass that cannot run means: score by rows
        logger.info("packed scoring is not available on this model: %s", exc)
        return "rows"
    if err <= 1e-4 and same:
        return "packed"
    logger.warning("packed scoring differs from row scoring on this model (max |dlogprob| %.3g, argmax %s); "
                   "scoring by rows", err, "same" if same else "differs")
    return "rows"


@torch.no_grad()
def _score_rows(model: Model, seqs: Sequence[Seq], batch_size: int) -> dict[Seq, TokenScores]:
    out: dict[Seq, TokenScores] = {}
    pad = model.pad_token_id  # right padding: its value never reaches a real position's logits
    # pairs whose model input is the same (a prompt with one-token targets: the last target token is
    # never an input) share one forward; inputs sorted by length so padding stays small
    by_input: dict[tuple[int, ...], list[Seq]] = {}
    for p, t in seqs:
        by_input.setdefault((p + t)[:-1], []).append((p, t))
    inputs = sorted(by_input, key=len)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        for row, ids in enumerate(chunk):
            tokens[row, : len(ids)] = torch.tensor(ids)
        logits = model(tokens.to(model.device))
        for row, ids in enumerate(chunk):
            for p, t in by_input[ids]:
                # the logits at position i predict token i + 1: target token j is predicted at len(p) - 1 + j
                pos = torch.arange(len(p) - 1, len(p) - 1 + len(t), device=logits.device)
                out[(p, t)] = _token_scores(logits[row, pos].float(), t)
    return out


def _token_scores(logits: Float[Tensor, "n_target vocab"], target: tuple[int, ...]) -> TokenScores:
    logprobs = torch.log_softmax(logits, dim=-1)
    ids = torch.tensor(target, device=logits.device)
    return TokenScores(target=target, logprobs=logprobs.gather(1, ids[:, None])[:, 0].cpu(),
                       argmax=logits.argmax(dim=-1).cpu())


@dataclass
class _PackedRow:
    """One prompt and its continuations' inputs in one row: ids, positions, segment of each token
    (0: the prompt, j: the j-th continuation) and where each pair's scores are read."""

    ids: list[int]
    positions: list[int]
    segment: list[int]
    reads: dict[Seq, list[int]]


def _pack(seqs: Sequence[Seq]) -> list[_PackedRow]:
    by_prompt: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for p, t in seqs:
        targets = by_prompt.setdefault(p, [])
        if t not in targets:
            targets.append(t)
    rows = []
    for p, targets in by_prompt.items():
        n = len(p)
        row = _PackedRow(list(p), list(range(n)), [0] * n, {})
        for j, t in enumerate(targets, start=1):
            # target token 0 is predicted after the prompt; token i > 0 after the continuation's token i - 1
            row.reads[(p, t)] = [n - 1] + list(range(len(row.ids), len(row.ids) + len(t) - 1))
            row.ids.extend(t[:-1])
            row.positions.extend(range(n, n + len(t) - 1))
            row.segment.extend([j] * (len(t) - 1))
        rows.append(row)
    return sorted(rows, key=lambda r: len(r.ids))


@torch.no_grad()
def _score_packed(model: Model, seqs: Sequence[Seq], batch_size: int) -> dict[Seq, TokenScores]:
    """Packed scoring (:data:`SCORE_MODES`): one row per prompt, a tree mask, logits only where read."""
    out: dict[Seq, TokenScores] = {}
    dev = model.device
    rows = _pack(seqs)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r.ids) for r in chunk)
        tokens = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
        positions = torch.zeros(len(chunk), width, dtype=torch.long)
        segment = torch.full((len(chunk), width), -1, dtype=torch.long)  # padding: its own segment
        for i, r in enumerate(chunk):
            tokens[i, : len(r.ids)] = torch.tensor(r.ids)
            positions[i, : len(r.ids)] = torch.tensor(r.positions)
            segment[i, : len(r.ids)] = torch.tensor(r.segment)
        tokens, positions, segment = tokens.to(dev), positions.to(dev), segment.to(dev)
        idx = torch.arange(width, device=dev)
        causal = idx[None, :] <= idx[:, None]  # [query, key]
        same = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])  # key in prompt or own segment
        h = block_input(model, 0, tokens)
        mask = additive_mask(causal[None] & same, h.dtype)
        for layer in range(model.arch.n_layers):
            h = run_block(model, layer, h, position_ids=positions, attention_mask=mask)
        where = [(i, pair, cols) for i, r in enumerate(chunk) for pair, cols in r.reads.items()]
        row_idx = torch.tensor([i for i, _, cols in where for _ in cols], device=dev)
        col_idx = torch.tensor([c for _, _, cols in where for c in cols], device=dev)
        logits = final_logits(model, h[row_idx, col_idx]).float()
        at = 0
        for _, pair, cols in where:
            out[pair] = _token_scores(logits[at : at + len(cols)], pair[1])
            at += len(cols)
    return {pair: out[pair] for pair in dict.fromkeys(seqs)}


# --------------------------------------------------------------------------------------------------
# fluency: ROME's generation entropy


def word_tokenize(text: str) -> list[str]:
    """Split text into words and punctuation the way NLTK's Treebank tokenizer mostly does.

    ROME tokenizes generations with ``nltk.word_tokenize``; NLTK needs a data download that these
    machines cannot make, so this regex follows its main rules (punctuation apart, ``n't`` and
    ``'s``-style clitics apart). Entropies agree with NLTK's up to those rare differences.
    """
    return re.findall(r"\w+(?=n't\b)|n't\b|'\w+|\w+|[^\w\s]", text)


def ngram_entropy(text: str) -> float:
    """ROME's weighted n-gram entropy of one text: ``mean(2/3 * H2, 4/3 * H3)`` in bits."""
    words = word_tokenize(text)
    weighted = []
    for n, weight in _NGRAM_WEIGHTS.items():
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        weighted.append(weight * h)
    return sum(weighted) / len(weighted)


def _row_seed(seed: int, prompt: str, copy: int) -> int:
    """A generation row's own seed: the same prompt, copy and seed sample the same text whatever else
    is in the batch or call."""
    return zlib.crc32(f"{seed}\x00{copy}\x00{prompt}".encode())


def _next_tokens(logits: Float[Tensor, "batch vocab"], top_k: int | None,
                 generators: Sequence[torch.Generator]) -> Int[Tensor, " batch"]:
    """Greedy (``top_k=None``) or a draw from each row's ``top_k`` most likely tokens, renormalised
    (temperature 1), with each row's own generator."""
    if top_k is None:
        return logits.argmax(-1)
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
    probs = probs.cpu()
    picks = [int(torch.multinomial(probs[r] / probs[r].sum(), 1, generator=g)) for r, g in enumerate(generators)]
    return ids[torch.arange(len(picks)), torch.tensor(picks, device=ids.device)]


@torch.no_grad()
def _sample_rows(model: Model, rows: Sequence[list[int]], n_new: int, top_k: int | None,
                 generators: Sequence[torch.Generator]) -> list[list[int]]:
    """``n_new`` tokens after each row (left-padded into one batch), one forward per token with the KV
    cache where the load-time probe found it exact, else the whole sequence each step."""
    dev = model.device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    cached = bool(model.compat.kv_cache)
    cache_kw = cache_keyword(model.hf) or "past_key_values"  # "cache" since transformers 5.2x
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.hf.forward).parameters else {}
    out: list[Tensor] = []
    past = None
    step_ids = ids
    for _ in range(n_new):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if cached and past is not None:
            positions = positions[:, -step_ids.shape[1]:]
        res = model.hf(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=cached,
                       **{cache_kw: past}, **extra)
        if cached:
            past = getattr(res, "cache", None)
            past = getattr(res, "past_key_values", None) if past is None else past
            cached = past is not None  # no cache came back: recompute the whole sequence from here on
        token = _next_tokens(res.logits[:, -1], top_k, generators)
        out.append(token)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        ids = torch.cat([ids, token[:, None]], dim=1)
        step_ids = token[:, None] if cached else ids
    new = torch.stack(out, dim=1).tolist() if out else [[] for _ in rows]
    return [list(r) + n for r, n in zip(rows, new, strict=True)]


@torch.no_grad()
def generate_texts(
    model: Model,
    prompts: Sequence[str],
    n_gen_per_prompt: int = 1,
    max_out_len: int = 100,
    top_k: int | None = 5,
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """Prompt + generated text for each prompt, ``n_gen_per_prompt`` times, as ROME's fluency test does.

    ``top_k=5`` samples from the five most likely tokens (ROME's ``generate_fast``); ``top_k=None``
    decodes greedily. Generation stops when the prompt plus continuation reach ``max_out_len`` tokens
    (BOS not counted); EOS neither stops a row nor is banned (as ``generate_fast``). Rows of similar
    length are generated together (left-padded, ``batch_size`` at a time, KV cache), each from its own
    generator seeded by ``seed``, its prompt and its copy number: a prompt gets the same texts whether
    it is generated alone or among others (up to the float rounding of differently shaped products,
    which would have to land a draw within ~1e-6 of a boundary to change a token).
    """
    if n_gen_per_prompt < 1:
        raise ValueError(f"n_gen_per_prompt must be >= 1, got {n_gen_per_prompt}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (greedy), got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    jobs = []  # (output slot, prompt ids, new tokens wanted, generator)
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in model.to_tokens(prompt)[0]]
        for c in range(n_gen_per_prompt):
            gen = torch.Generator().manual_seed(_row_seed(seed, prompt, c))
            jobs.append((i * n_gen_per_prompt + c, ids, max(0, max_out_len - (len(ids) - 1)), gen))
    jobs.sort(key=lambda j: len(j[1]))
    # a chunk runs every row to its longest prompt + its largest request (the shortest prompt's), left
    # padded: rows join a chunk while that stays within the model's context
    chunks: list[list[tuple[int, list[int], int, torch.Generator]]] = []
    for job in jobs:
        if chunks and len(chunks[-1]) < batch_size and len(job[1]) + chunks[-1][0][2] <= max(model.n_ctx, 1):
            chunks[-1].append(job)
        else:
            chunks.append([job])
    texts = [""] * len(jobs)
    for chunk in chunks:
        n_new = max(j[2] for j in chunk)
        rows = _sample_rows(model, [j[1] for j in chunk], n_new, top_k, [j[3] for j in chunk])
        for (slot, ids, wanted, _), row in zip(chunk, rows, strict=True):
            text = model.tokenizer.decode(row[: len(ids) + wanted], skip_special_tokens=True)
            texts[slot] = unicodedata.normalize("NFKD", text).replace("\n\n", " ")
    return texts


def generation_prompts(fact: Fact, max_prompts: int | None = None) -> list[str]:
    """A fact's generation prompts (CounterFact), else its filled rewrite prompt."""
    prompts = list(fact.generation_prompts) or [fact.text]
    return prompts[:max_prompts] if max_prompts is not None else prompts
