"""Causal tracing inputs: token kinds and classes, the subject's token span, the noise scale, windows."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from knowscope import hooks as hk
from knowscope.facts import Fact, load_bundled_facts
from knowscope.models import Model

logger = logging.getLogger(__name__)


#: what a cell restores (see the package docstring), how a trace is computed, the fast path's mode
TraceKind = Literal["hidden", "mlp", "attn", "hidden_frozen_mlp", "hidden_frozen_attn"]
TraceMethod = Literal["fast", "reference", "attribution"]
FastMode = Literal["suffix", "full"]

KINDS = ("hidden", "mlp", "attn")
SEVERED_KINDS = ("hidden_frozen_mlp", "hidden_frozen_attn")
ALL_KINDS = KINDS + SEVERED_KINDS
METHODS = ("fast", "reference", "attribution")
FAST_MODES = ("suffix", "full")
TOKEN_CLASSES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")
TOKEN_CLASS_LABELS = {
    "first_subject": "First subject token",
    "middle_subject": "Middle subject tokens",
    "last_subject": "Last subject token",
    "first_subsequent": "First subsequent token",
    "further": "Further tokens",
    "last": "Last token",
}

# used for the noise scale when no bundled facts are available (e.g. a fresh checkout)
FALLBACK_SUBJECTS = (
    "Eiffel Tower", "Lionel Messi", "Mexico", "Michael Jordan", "Apple", "Microsoft", "Danielle Darrieux",
    "Colosseum", "Tokyo", "Barack Obama", "Albert Einstein", "Toyota", "Amazon River", "Mount Everest",
    "William Shakespeare", "Google", "Germany", "Pablo Picasso", "BBC", "Nintendo",
)


# --------------------------------------------------------------------------------------------
# inputs: subject positions, noise, kinds


_STD_CACHE: dict[tuple[str, int], float] = {}


def embedding_std(model: Model, subjects: Sequence[str] | None = None) -> float:
    """Standard deviation of the token-embedding entries of many subjects (ROME's noise unit).

    ``subjects`` defaults to the bundled facts' subjects (a fixed fallback list when none are
    bundled). Each subject is tokenized on its own, without BOS, as ROME does. Cached per model.
    """
    if subjects is None:

        try:
            subjects = sorted({f.subject for f in load_bundled_facts()})
        except Exception:  # noqa: BLE001 - a missing/partial data file must not break tracing
            subjects = []
        if not subjects:
            logger.warning("no bundled facts: noise scale from %d built-in subjects", len(FALLBACK_SUBJECTS))
            subjects = list(FALLBACK_SUBJECTS)
    key = (model.fingerprint, hash(tuple(subjects)))
    if key in _STD_CACHE:
        return _STD_CACHE[key]
    ids: list[int] = []
    for s in subjects:
        ids.extend(model.tokenizer.encode(s, add_special_tokens=False))
    if not ids:
        raise ValueError("no subject tokens to estimate the embedding std from")
    with torch.no_grad():
        emb = model.hf.get_input_embeddings()
        weight = emb.weight if hasattr(emb, "weight") else emb.original_component.weight
        std = float(weight[torch.tensor(ids, device=weight.device)].float().std())
    _STD_CACHE[key] = std
    return std


def _check_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = KINDS if kinds == "all" else (kinds,)
    out = tuple(dict.fromkeys(kinds))
    bad = [k for k in out if k not in ALL_KINDS]
    if bad or not out:
        raise ValueError(f"unknown kind(s) {bad or list(out)}; valid: {', '.join(ALL_KINDS)} or 'all'")
    return out


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Layers restored for an mlp/attn cell at ``layer``: ``window`` layers centred on it, clipped (ROME)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _hook_for(kind: str, layer: int) -> str:
    if kind in ("mlp", "hidden_frozen_mlp"):
        return hk.mlp_out(layer)
    if kind in ("attn", "hidden_frozen_attn"):
        return hk.attn_out(layer)
    return hk.resid_post(layer)


def token_classes(subject_range: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """ROME's token classes for a prompt of ``n_tokens`` tokens with the subject at ``subject_range``.

    The last token belongs only to ``last``; subject classes take precedence over the rest.
    """
    s0, s1 = subject_range
    last = n_tokens - 1
    out: dict[str, list[int]] = {c: [] for c in TOKEN_CLASSES}
    out["last"] = [last]
    subj = [t for t in range(s0, s1) if t != last]
    if subj:
        out["first_subject"] = [subj[0]]
        out["last_subject"] = [subj[-1]]
        out["middle_subject"] = subj[1:-1]
    after = list(range(s1, last))
    if after:
        out["first_subsequent"] = [after[0]]
        out["further"] = after[1:]
    return out


def _resolve_target(model: Model, target: str | None, clean_last: Tensor) -> tuple[str, int]:
    if target is None:
        tid = int(clean_last.argmax())
        return model.tokenizer.decode([tid]), tid
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target {target!r} is empty: give the answer text (e.g. 'Paris'), or None for the "
                         "model's own top-1 answer")
    text = Fact.continuation(target)
    return text, model.encode_target(text)[0]


def _resolve_positions(tokens: str | Sequence[str | int] | None, subject_range: tuple[int, int],
                       n_tokens: int) -> list[int]:
    if tokens is None:
        return list(range(n_tokens))
    items = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
    classes = token_classes(subject_range, n_tokens)
    out: set[int] = set()
    for item in items:
        if isinstance(item, str):
            if item not in classes:
                raise ValueError(f"unknown token class {item!r}; valid: {', '.join(TOKEN_CLASSES)} or positions")
            out.update(classes[item])
        else:
            if not -n_tokens <= int(item) < n_tokens:
                raise ValueError(f"token position {item} is out of range for {n_tokens} tokens (0..{n_tokens - 1})")
            out.add(int(item) % n_tokens)
    if not out:
        raise ValueError(f"tokens={tokens!r} selects no token of this prompt")
    return sorted(out)
