"""The tracing entry points: :func:`trace` (one prompt), :func:`trace_facts` (many facts, ROME's summary)
and :func:`locate` (the layer to edit)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch

from knowscope import hooks as hk
from knowscope.circuits.patching import cache_activations
from knowscope.circuits.tracing.inputs import (
    FAST_MODES,
    KINDS,
    METHODS,
    SEVERED_KINDS,
    FastMode,
    TraceKind,
    TraceMethod,
    _check_kinds,
    _hook_for,
    _resolve_positions,
    _resolve_target,
    embedding_std,
)
from knowscope.circuits.tracing.partial import (
    _check_record,
    _fast_mode,
    _record_run,
    _resid_pre0,
    _supports_partial_forward,
)
from knowscope.circuits.tracing.tables import FactsTraceResult, LayerChoice, TraceResult, aggregate, choose_layers
from knowscope.circuits.tracing.tracer import _Tracer
from knowscope.compat import FIX_HINT
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.progress import progress_bar

logger = logging.getLogger(__name__)


def trace(
    model: Model,
    prompt: str,
    subject: str,
    target: str | None = None,
    kinds: TraceKind | Literal["all"] | Sequence[TraceKind] = KINDS,
    samples: int = 10,
    noise: float = 3.0,
    window: int = 10,
    seed: int = 0,
    method: TraceMethod = "fast",
    noise_std: float | None = None,
    max_rows: int = 512,
    tokens: str | Sequence[str | int] | None = None,
    progress: bool = False,
    fast_mode: FastMode | None = None,
) -> TraceResult:
    """Causal trace of ``prompt`` with ``subject`` corrupted (ROME), per kind ``[token, layer]``.

    Args:
        model: a loaded :class:`~knowscope.models.Model` (any architecture the bridge supports; the
            fast path covers absolute-position and rotary models, others fall back to the reference).
        prompt: the text; BOS is prepended (knowscope's convention), so position 0 is BOS.
        subject: a substring of ``prompt`` whose tokens are corrupted.
        target: the answer whose first token's probability is scored (a leading space is added if
            missing, as for CounterFact targets); ``None`` uses the model's own top-1 next token.
        kinds: any of ``hidden``, ``mlp``, ``attn``, ``hidden_frozen_mlp``, ``hidden_frozen_attn``; or "all"
            for the first three.
        samples: noise samples per cell (ROME: 10).
        noise: noise std as a multiple of :func:`embedding_std` (ROME: 3).
        window: layers restored together for the mlp/attn kinds (ROME: 10), centred on the layer.
        seed: seeds the noise draws (the same draws are used for every cell).
        method: ``"fast"`` (exact, batched), ``"reference"`` (one pass per cell) or ``"attribution"``.
        noise_std: an absolute noise standard deviation, overriding ``noise``.
        max_rows: rows (cells x samples) per forward pass of the fast path; bounds memory.
        tokens: trace only these token positions (ints, or ROME token classes such as ``"last_subject"``,
            ``"last"``); other rows of the table are NaN. ``None`` traces every token.
        progress: show a tqdm progress bar.
        fast_mode: how the fast path runs partial passes, ``"suffix"`` (KV cache) or ``"full"`` (no
            cache); ``None`` measures once per model which one this install supports (see
            :func:`_fast_mode`). Both give the same numbers.
    """
    kinds_t = _check_kinds(kinds)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if noise_std is not None and not (noise_std > 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std must be a positive number, got {noise_std!r}")
    if noise_std is None and not (noise > 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a positive multiple of the embedding std, got {noise!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if fast_mode is not None and fast_mode not in FAST_MODES:
        raise ValueError(f"unknown fast_mode {fast_mode!r}; valid: {', '.join(FAST_MODES)}")
    if method == "attribution" and any(k in SEVERED_KINDS for k in kinds_t):
        raise ValueError(f"method 'attribution' supports kinds {', '.join(KINDS)}, not {list(kinds_t)}")
    if method == "fast" and not _supports_partial_forward(model):
        logger.warning("fast path not available for %s positions; using the reference loop", model.arch.positional)
        method = "reference"

    started = time.perf_counter()
    token_ids = model.to_tokens(prompt).to(model.device)
    s0, s1 = model.subject_span(prompt, subject)
    positions = _resolve_positions(tokens, (s0, s1), token_ids.shape[1])
    tokens = token_ids
    std = float(noise_std) if noise_std is not None else float(noise) * embedding_std(model)
    gen = torch.Generator().manual_seed(int(seed))
    draws = torch.randn(samples, s1 - s0, model.arch.d_model, generator=gen) * std
    tracer = _Tracer(model, tokens, s0, s1, draws.to(model.device, model.dtype), window, max_rows)
    n = model.arch.n_layers

    needed = sorted({_hook_for(k, L) for k in ("hidden", "mlp", "attn") for L in range(n)})

    with torch.no_grad():
        clean_logits, clean_cache = cache_activations(model, tokens, needed)
        corrupt_logits, corrupt_cache = cache_activations(model, tracer.corrupted_tokens(), needed,
                                                          fwd_hooks=[(hk.EMBED, tracer.noise_hook())])
    tracer.passes += 2
    target_text, tracer.target_id = _resolve_target(model, target, clean_logits[0, -1])
    high = float(tracer.probs(clean_logits[:, -1]).mean())
    low = float(tracer.probs(corrupt_logits[:, -1]).mean())

    if method == "reference":
        scores = tracer.reference(kinds_t, clean_cache, corrupt_cache, positions, progress)
    elif method == "attribution":
        scores = tracer.attribution(kinds_t, clean_cache, low, positions)
        untraced = [t for t in range(tokens.shape[1]) if t not in set(positions)]
        for k in scores:
            scores[k][untraced] = math.nan
    else:
        with torch.no_grad():
            h0 = _resid_pre0(model, tokens, None)
            mode, clean_rec = (fast_mode, None) if fast_mode is not None else _fast_mode(model, h0, clean_cache)
            if clean_rec is None:
                clean_rec = _record_run(model, h0, with_kv=mode == "suffix")
            corrupt_rec = _record_run(model, _resid_pre0(model, tracer.corrupted_tokens(), tracer.noise_hook()),
                                      with_kv=mode == "suffix")
        tracer.passes += 2
        _check_record(clean_rec, clean_cache, n)
        _check_record(corrupt_rec, corrupt_cache, n)
        if mode == "suffix" and not (clean_rec.kv and corrupt_rec.kv):
            raise RuntimeError(f"fast_mode='suffix': the attention did not write keys/values to the cache. {FIX_HINT}")
        scores = tracer.fast(kinds_t, clean_rec, corrupt_rec, low, positions, progress, mode)

    return TraceResult(
        prompt=prompt, subject=subject, tokens=model.to_str_tokens(tokens[0]), subject_range=(s0, s1),
        target=target_text, target_id=tracer.target_id, scores=scores, low_score=low, high_score=high,
        samples=samples, noise=None if noise_std is not None else float(noise), noise_std=std, window=window,
        seed=int(seed), method=method, seconds=time.perf_counter() - started, forward_passes=tracer.passes,
        model_name=model.name, fingerprint=model.fingerprint,
    )


def trace_facts(
    model: Model,
    facts: Sequence[Fact],
    kinds: str | Sequence[str] = KINDS,
    target: str = "true",
    progress: bool = False,
    **trace_kwargs: Any,
) -> FactsTraceResult:
    """Trace many facts and average their indirect effects by token class (ROME's summary figure).

    ``target="true"`` scores each fact's true object (``" " + target_true``); ``"predicted"`` scores
    the model's own top-1 answer (ROME's "known facts" setting; the same for facts the model knows).
    Other keyword arguments go to :func:`trace` (samples, noise, window, seed, method, ...).
    """
    if not facts:
        raise ValueError("no facts to trace")
    if target not in ("true", "predicted"):
        raise ValueError(f"target must be 'true' or 'predicted', got {target!r}")
    kinds_t = _check_kinds(kinds)
    started = time.perf_counter()
    traces = []
    for fact in progress_bar(facts, desc="trace facts", disable=not progress):
        tgt = fact.true_continuation if target == "true" else None
        traces.append(trace(model, fact.text, fact.subject, target=tgt, kinds=kinds_t, **trace_kwargs))
    settings = {"kinds": list(kinds_t), "target": target, "model": model.name, **{
        k: v for k, v in trace_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    return aggregate(traces, settings, time.perf_counter() - started)


def locate(
    model: Model,
    facts: Sequence[Fact] | FactsTraceResult,
    kind: str = "mlp",
    window: int | None = None,
    **trace_kwargs: Any,
) -> LayerChoice:
    """The layer with the largest ``kind`` indirect effect at the last subject token, averaged over facts.

    Args:
        facts: facts to trace, or a :class:`FactsTraceResult` already computed (reused as is).
        kind: ``"mlp"`` (ROME's choice), ``"hidden"`` or ``"attn"``.
        window: ``None`` for one layer (ROME); an int for ``window`` consecutive layers centred on the
            best one (MEMIT), shifted to fit inside the model.
        trace_kwargs: passed to :func:`trace_facts` / :func:`trace` (samples, noise, method, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    if isinstance(facts, FactsTraceResult):
        agg = facts
        if kind not in agg.class_effects:
            raise ValueError(f"the given traces have no kind {kind!r} (they have {', '.join(agg.kinds)})")
    else:  # only the last subject token is needed
        trace_kwargs.setdefault("tokens", "last_subject")
        agg = trace_facts(model, facts, kinds=(kind,), **trace_kwargs)
    if agg.class_counts.get("last_subject", 0) == 0:
        raise ValueError("no fact has a last subject token before the last token; cannot locate")
    effects = [float(x) for x in agg.effect(kind, "last_subject")]
    layer, layers = choose_layers(effects, window)
    trace_window = agg.settings.get("window", 10)
    return LayerChoice(layer=layer, layers=layers, kind=kind, effect_by_layer=effects, n_facts=agg.n_facts,
                       facts=[t.prompt for t in agg.traces], window=window,
                       settings={**agg.settings, "trace_window": trace_window})
