"""The "locate" side of knowscope: causal tracing, activation patching, knowledge circuits."""

from knowscope.circuits.patching import (
    PatchingResult,
    activation_patching,
    cache_activations,
    logit_diff_metric,
    logit_metric,
    prob_metric,
    run_with_patches,
)
from knowscope.circuits.tracing import (
    ALL_KINDS,
    KINDS,
    TOKEN_CLASSES,
    FactsTraceResult,
    LayerChoice,
    TraceResult,
    aggregate,
    embedding_std,
    locate,
    subject_token_range,
    trace,
    trace_facts,
)

__all__ = [
    "ALL_KINDS",
    "KINDS",
    "TOKEN_CLASSES",
    "FactsTraceResult",
    "LayerChoice",
    "PatchingResult",
    "TraceResult",
    "activation_patching",
    "aggregate",
    "cache_activations",
    "embedding_std",
    "locate",
    "logit_diff_metric",
    "logit_metric",
    "prob_metric",
    "run_with_patches",
    "subject_token_range",
    "trace",
    "trace_facts",
]
