"""Calling conventions that move between transformers / TransformerLens releases, detected at load time.

knowscope drives the Hugging Face model through TransformerLens 4's bridge. Two things it needs have
changed names between releases, and a change there breaks results *silently*:

* the KV cache. transformers 5.24 renamed the decoder layers' ``past_key_values`` argument to
  ``cache``; TransformerLens 4.3's attention bridge still reads only ``past_key_values`` (or
  ``layer_past``), so the cache stops reaching attention and cached generation sees one token at a
  time. Nothing raises.
* the keyword that hands a decoder layer its cache (the fast causal trace calls single blocks).

Instead of naming a keyword, this module *measures*: :func:`probe_kv_cache` compares cached with
uncached greedy decoding through ``generate()`` (the documented API) on the loaded model. When the
two differ, :func:`install_cache_bridge` adds a forward pre-hook to every attention bridge that
passes on whatever cache object the layer received (found by what it is, not by its name) under
the name the attention reads; the probe then runs again. If the cache still does not reach
attention, generation runs without it (correct, slower) and ``knowscope doctor`` says so.
:func:`cache_keyword` finds the keyword a decoder layer takes its cache by from its signature.
The fast trace checks its own partial forward against the bridge's forward pass and falls back
to a cache-free mode (see ``knowscope.circuits.tracing``), so neither path trusts a name.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: the names a decoder layer has taken its KV cache by, newest first (only a fallback for
#: :func:`cache_keyword`, which reads the annotation first)
KNOWN_CACHE_KEYWORDS = ("cache", "past_key_values", "layer_past", "past_key_value")

#: what to tell a user whose install cannot run the fast path
FIX_HINT = ("reinstall the tested versions (`make setup`, or `pip install -r requirements.lock`), or pass "
            "method='reference' (CLI: --method reference), which needs no partial forward")


def is_cache_like(value: Any) -> bool:
    """True for a KV-cache object (transformers' ``Cache`` classes and knowscope's prefix cache)."""
    return hasattr(value, "update") and hasattr(value, "get_seq_length") and not isinstance(value, Tensor)


def cache_keyword(layer: nn.Module) -> str | None:
    """The keyword by which decoder ``layer`` (an HF module) takes its KV cache, from its signature.

    A parameter annotated with a ``Cache`` type wins; otherwise the first of
    :data:`KNOWN_CACHE_KEYWORDS` the signature has. ``None`` when the layer takes no cache.
    """
    try:
        params = inspect.signature(layer.forward).parameters
    except (TypeError, ValueError):
        return None
    for name, p in params.items():
        if p.annotation is not inspect.Parameter.empty and "Cache" in str(p.annotation):
            return name
    for name in KNOWN_CACHE_KEYWORDS:
        if name in params:
            return name
    return None


def _attention_bridges(bridge: Any) -> list[nn.Module]:
    blocks = getattr(bridge, "blocks", None) or []
    return [blk.attn for blk in blocks if hasattr(blk, "attn")]


def _pass_cache_on(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: hand a cache received under any name to the attention as ``past_key_values``."""
    if kwargs.get("past_key_values") is not None or kwargs.get("layer_past") is not None:
        return None
    for value in kwargs.values():
        if is_cache_like(value):
            return args, {**kwargs, "past_key_values": value}
    return None


def install_cache_bridge(bridge: Any) -> int:
    """Add :func:`_pass_cache_on` to every attention bridge once; returns how many were added."""
    added = 0
    for attn in _attention_bridges(bridge):
        if getattr(attn, "_knowscope_cache_bridge", False):
            continue
        attn.register_forward_pre_hook(_pass_cache_on, with_kwargs=True)
        attn._knowscope_cache_bridge = True
        added += 1
    return added


@torch.no_grad()
def probe_kv_cache(hf: nn.Module, input_ids: Tensor, new_tokens: int = 3) -> float:
    """Largest difference between the logits of cached and uncached greedy decoding.

    Both runs go through ``generate()`` with ``output_logits``; a cache that does not reach
    attention gives different logits from the second new token on.
    """
    runs = []
    for use_cache in (True, False):
        out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        runs.append((out.sequences, torch.stack([lg.float() for lg in out.logits])))
    (seq_c, log_c), (seq_u, log_u) = runs
    if not torch.equal(seq_c, seq_u):
        return float("inf")
    return float((log_c - log_u).abs().max())


#: the editors' v*/z forward passes, fastest first (knowscope.editing.vpaths.VPath; kept here, below
#: editing, so Compat can rank the modes it records)
EDIT_PATHS = ("plain", "packed", "bridge")


@dataclass
class Compat:
    """What load-time detection found for one model (printed by ``knowscope doctor``)."""

    kv_cache: bool = True  # cached generation equals uncached generation
    cache_bridge: bool = False  # the attention cache bridge had to be installed
    cache_keyword: str | None = None  # the keyword a decoder layer takes its cache by
    probe_diff: float = 0.0  # max |logit| difference cached vs uncached (after any fix)
    trace_mode: str | None = None  # the fast trace's partial forward ("suffix"/"full"), set on first use
    edit_modes: dict[str, str] = field(default_factory=dict)  # fastest v*/z pass per hook kind (hook_mlp_out, ...)
    edit_checks: dict[tuple[str, str], bool] = field(default_factory=dict)  # (hook, pass) -> reproduces bridge
    score_mode: str | None = None  # teacher-forced scoring ("packed"/"rows"), set on first use
    notes: list[str] = field(default_factory=list)

    @property
    def edit_mode(self) -> str | None:
        """The fastest v*/z forward pass any hook kind runs ("plain"/"packed"/"bridge");
        ``None`` before any edit."""
        return min(self.edit_modes.values(), key=EDIT_PATHS.index, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"kv_cache": self.kv_cache, "cache_bridge": self.cache_bridge, "cache_keyword": self.cache_keyword,
                "probe_diff": self.probe_diff, "trace_mode": self.trace_mode, "edit_mode": self.edit_mode,
                "edit_modes": dict(self.edit_modes), "score_mode": self.score_mode,
                "notes": list(self.notes)}


def detect(bridge: Any, hf: nn.Module, input_ids: Tensor, tol: float = 1e-3) -> Compat:
    """Measure the cache conventions of a freshly loaded model and adapt (see the module docstring)."""
    found = Compat()
    blocks = getattr(bridge, "blocks", None) or []
    if len(blocks):
        original = getattr(blocks[0], "original_component", None)
        found.cache_keyword = cache_keyword(original) if original is not None else None
    diff = probe_kv_cache(hf, input_ids)
    if diff > tol:
        n = install_cache_bridge(bridge)
        found.cache_bridge = n > 0
        before = diff
        diff = probe_kv_cache(hf, input_ids)
        found.notes.append(f"cached generation differed from uncached (max |dlogit| {before:.3g}); "
                           f"passed the cache on to {n} attention bridges")
    found.probe_diff = diff
    if diff > tol:
        found.kv_cache = False
        found.notes.append(f"the KV cache does not reach attention (max |dlogit| {diff:.3g}): generation runs "
                           "without it (correct, slower)")
        logger.warning("KV cache does not reach attention on this install; generating without it. %s", FIX_HINT)
    return found
