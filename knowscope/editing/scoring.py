"""Scoring text under a model: teacher-forced token scores of (prompt, continuation) pairs, batched
and exact for causal models; ROME's fluency (generated text and its weighted n-gram entropy)."""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.facts import Fact
from knowscope.models import Model

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


@torch.no_grad()
def _score_ids(
    model: Model, seqs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], batch_size: int
) -> dict[tuple[tuple[int, ...], tuple[int, ...]], TokenScores]:
    out: dict[tuple[tuple[int, ...], tuple[int, ...]], TokenScores] = {}
    pad = model.pad_token_id  # right padding: its value never reaches a real position's logits
    # pairs whose model input is the same (a prompt with one-token targets: the last target token is
    # never an input) share one forward; inputs sorted by length so padding stays small
    by_input: dict[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
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
                rows = logits[row, pos].float()
                logprobs = torch.log_softmax(rows, dim=-1)
                target = torch.tensor(t, device=logits.device)
                out[(p, t)] = TokenScores(
                    target=t,
                    logprobs=logprobs.gather(1, target[:, None])[:, 0].cpu(),
                    argmax=rows.argmax(dim=-1).cpu(),
                )
    return out


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


@torch.no_grad()
def generate_texts(
    model: Model,
    prompts: Sequence[str],
    n_gen_per_prompt: int = 1,
    max_out_len: int = 100,
    top_k: int | None = 5,
    seed: int = 0,
) -> list[str]:
    """Prompt + generated text for each prompt, ``n_gen_per_prompt`` times, as ROME's fluency test does.

    ``top_k=5`` samples from the five most likely tokens (ROME's ``generate_fast``); ``top_k=None``
    decodes greedily. Generation stops when the prompt plus continuation reach ``max_out_len`` tokens
    (BOS not counted). Seeded: the same call gives the same texts.
    """
    if n_gen_per_prompt < 1:
        raise ValueError(f"n_gen_per_prompt must be >= 1, got {n_gen_per_prompt}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (greedy), got {top_k}")
    texts = []
    sampling = {"do_sample": False} if top_k is None else {"do_sample": True, "top_k": top_k, "top_p": 1.0,
                                                             "temperature": 1.0}
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for prompt in prompts:
            tokens = model.to_tokens(prompt).to(model.device).repeat(n_gen_per_prompt, 1)
            n_new = max(0, max_out_len - (tokens.shape[1] - 1))
            if n_new:
                # ROME's generate_fast samples to the length limit: EOS neither stops a row nor is banned
                tokens = model.generate(tokens, max_new_tokens=n_new, eos_token_id=None, **sampling)
            for row in tokens:
                text = model.tokenizer.decode(row.tolist(), skip_special_tokens=True)
                texts.append(unicodedata.normalize("NFKD", text).replace("\n\n", " "))
    return texts


def generation_prompts(fact: Fact, max_prompts: int | None = None) -> list[str]:
    """A fact's generation prompts (CounterFact), else its filled rewrite prompt."""
    prompts = list(fact.generation_prompts) or [fact.text]
    return prompts[:max_prompts] if max_prompts is not None else prompts
