"""The "locate" side of knowscope: causal tracing, activation patching, knowledge circuits."""

from knowscope.circuits.batches import CircuitBatch, make_batch
from knowscope.circuits.circuit import Circuit, knowledge_circuit, node_logit_attribution
from knowscope.circuits.diff import CircuitDiff, circuit_diff, noise_floor
from knowscope.circuits.eap import Attribution, attribute, patched_metric
from knowscope.circuits.graph import Graph, count_edges
from knowscope.circuits.patching import (
    PatchingResult,
    activation_patching,
    cache_activations,
    logit_diff_metric,
    logit_metric,
    prob_metric,
    run_with_patches,
)
from knowscope.circuits.pruning import (
    faithfulness_curve,
    greedy_edges,
    normalized_faithfulness,
    prune,
    prune_dangling,
    threshold_edges,
    top_n_edges,
)
from knowscope.circuits.roles import NodeRole, RoleReport, head_roles
from knowscope.circuits.toxic import ToxicRegion, locate_toxic
from knowscope.circuits.toxic_probe import ToxicLocation, locate_toxic_layers
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
    trace,
    trace_facts,
)

__all__ = [
    "ToxicLocation",
    "ToxicRegion",
    "locate_toxic",
    "locate_toxic_layers",
    "ALL_KINDS",
    "Attribution",
    "Circuit",
    "CircuitBatch",
    "CircuitDiff",
    "FactsTraceResult",
    "Graph",
    "KINDS",
    "LayerChoice",
    "NodeRole",
    "PatchingResult",
    "RoleReport",
    "TOKEN_CLASSES",
    "TraceResult",
    "activation_patching",
    "aggregate",
    "attribute",
    "cache_activations",
    "circuit_diff",
    "count_edges",
    "embedding_std",
    "faithfulness_curve",
    "greedy_edges",
    "head_roles",
    "knowledge_circuit",
    "locate",
    "logit_diff_metric",
    "logit_metric",
    "make_batch",
    "node_logit_attribution",
    "noise_floor",
    "normalized_faithfulness",
    "patched_metric",
    "prob_metric",
    "prune",
    "prune_dangling",
    "run_with_patches",

    "threshold_edges",
    "top_n_edges",
    "trace",
    "trace_facts",
]
