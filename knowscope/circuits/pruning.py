"""Choosing a circuit's edges from their scores, and measuring how faithful a circuit is.

Pruning (all return a boolean ``[n_forward, n_slots]`` mask, then :func:`prune_dangling` drops
edges that lie on no path from the input to the logits):

* :func:`top_n_edges`: the ``n`` edges of largest ``|score|``;
* :func:`threshold_edges`: every edge with ``|score| >= threshold``;
* :func:`greedy_edges`: grown backwards from the logits, each step adding the edge of largest
  ``|score|`` whose downstream node is already in the circuit.

Normalised faithfulness is ``(m_circuit - m_corrupted) / (m_clean - m_corrupted)`` with each
metric averaged over the batch: 1 means the circuit alone recovers the clean behaviour, 0 means it
recovers none of it. :func:`faithfulness_curve` measures it for circuits of growing size by exact
edge patching (:func:`knowscope.circuits.eap.patched_metric`).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from knowscope.circuits import eap
from knowscope.circuits.batches import CircuitBatch
from knowscope.circuits.graph import Graph
from knowscope.models import Model
from knowscope.work import OnUnit

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# pruning


def _check_scores(graph: Graph, scores: Tensor) -> None:
    if tuple(scores.shape) != (graph.n_forward, graph.n_slots):
        raise ValueError(f"scores have shape {tuple(scores.shape)}; expected {(graph.n_forward, graph.n_slots)}")


def top_n_edges(graph: Graph, scores: Float[Tensor, "n_forward n_slots"], n: int) -> Bool[Tensor, "n_forward n_slots"]:
    """The ``n`` edges of largest ``|score|`` (ties broken by index, deterministically)."""
    _check_scores(graph, scores)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= graph.n_edges:
        raise ValueError(f"top-n {n!r} is out of range: the graph has 0..{graph.n_edges} edges")
    absval = scores.abs().float()
    flat = torch.where(graph.edge_mask, absval, torch.full_like(absval, -1.0)).flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if n:
        order = torch.sort(flat, descending=True, stable=True).indices[:n]
        mask[order] = True
    return mask.view(graph.n_forward, graph.n_slots)


def threshold_edges(graph: Graph, scores: Tensor, threshold: float) -> Bool[Tensor, "n_forward n_slots"]:
    """Every edge with ``|score| >= threshold``."""
    _check_scores(graph, scores)
    if not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    return (scores.abs() >= threshold) & graph.edge_mask


def greedy_edges(graph: Graph, scores: Tensor, n: int) -> Bool[Tensor, "n_forward n_slots"]:
    """Grow ``n`` edges backwards from the logits, always taking the largest ``|score|`` edge
    that enters a node already in the circuit (the logits at first)."""
    _check_scores(graph, scores)
    if not isinstance(n, int) or not 0 <= n <= graph.n_edges:
        raise ValueError(f"n {n!r} is out of range: the graph has 0..{graph.n_edges} edges")
    absval = scores.abs().float()
    n_up = graph.n_upstream.tolist()
    owner = graph.slot_owner
    slots_of: list[list[int]] = [owner[:, u].nonzero().flatten().tolist() for u in range(graph.n_forward)]
    mask = torch.zeros(graph.n_forward, graph.n_slots, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []
    opened: set[int] = set()

    def open_slot(v: int) -> None:
        if v in opened:
            return
        opened.add(v)
        col = absval[: n_up[v], v].tolist()
        for u, s in enumerate(col):
            heapq.heappush(heap, (-s, u, v))

    open_slot(graph.logits_slot)
    in_circuit = {graph.logits_slot}
    taken = 0
    while taken < n and heap:
        _, u, v = heapq.heappop(heap)
        if mask[u, v]:
            continue
        mask[u, v] = True
        taken += 1
        if u not in in_circuit and u != 0:
            in_circuit.add(u)
            for slot in slots_of[u]:
                open_slot(slot)
    return mask


def prune_dangling(graph: Graph, mask: Bool[Tensor, "n_forward n_slots"]) -> Bool[Tensor, "n_forward n_slots"]:
    """Keep only edges on some path from the input to the logits.

    An edge ``u -> v`` survives when ``u`` is reachable from the input and a node owning slot ``v``
    reaches the logits (a KV slot of a GQA model is owned by every head of its group).
    """
    mask = mask.bool() & graph.edge_mask
    owner = graph.slot_owner  # [slot, node]
    reach = torch.zeros(graph.n_forward, dtype=torch.bool)
    reach[0] = True
    for u in range(1, graph.n_forward):
        slots = owner[:, u]
        reach[u] = bool((mask[:, slots] & reach[:, None]).any())
    co_slot = torch.zeros(graph.n_slots, dtype=torch.bool)
    co_slot[graph.logits_slot] = True
    co = torch.zeros(graph.n_forward, dtype=torch.bool)
    for u in range(graph.n_forward - 1, -1, -1):
        co[u] = bool((mask[u] & co_slot).any())
        if co[u]:
            co_slot |= owner[:, u]
    slot_ok = (owner & (co & reach)[None, :]).any(dim=1)
    slot_ok[graph.logits_slot] = True
    return mask & reach[:, None] & slot_ok[None, :]


def prune(graph: Graph, scores: Tensor, *, top_n: int | None = None, threshold: float | None = None,
          greedy: int | None = None) -> Bool[Tensor, "n_forward n_slots"]:
    """One of the three pruning rules (exactly one argument), then :func:`prune_dangling`."""
    given = [k for k, v in (("top_n", top_n), ("threshold", threshold), ("greedy", greedy)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of top_n, threshold, greedy (got {given or 'none'})")
    if top_n is not None:
        mask = top_n_edges(graph, scores, top_n)
    elif threshold is not None:
        mask = threshold_edges(graph, scores, threshold)
    else:
        assert greedy is not None
        mask = greedy_edges(graph, scores, greedy)
    return prune_dangling(graph, mask)


# --------------------------------------------------------------------------------------------
# faithfulness


def normalized_faithfulness(m_circuit: Tensor, m_clean: Tensor, m_corrupted: Tensor) -> float:
    """``(circuit - corrupted) / (clean - corrupted)`` of batch means."""
    gap = float(m_clean.mean() - m_corrupted.mean())
    if abs(gap) < 1e-9:
        raise ValueError("clean and corrupted metrics are equal: the corruption changes nothing to measure against")
    return float(m_circuit.mean() - m_corrupted.mean()) / gap


def default_sizes(n_edges: int) -> list[int]:
    """Circuit sizes for a faithfulness curve: fractions 0.1% .. 10% of the edges, then all."""
    fracs = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1]
    return sorted({max(1, int(round(f * n_edges))) for f in fracs} | {n_edges})


def faithfulness_curve(
    model: Model,
    attribution: eap.Attribution,
    batch: CircuitBatch,
    sizes: Sequence[int] | None = None,
    rule: str = "top_n",
    on_unit: OnUnit | None = None,
) -> dict[str, list[float]]:
    """Faithfulness of the top-n (or greedy) circuit for each size, by exact edge patching.

    ``on_unit(i, n_sizes)`` is called after each size's patched run.

    Returns ``{"n_edges_requested", "n_edges", "fraction", "faithfulness", "metric"}`` lists.
    """
    graph = attribution.graph
    if rule not in ("top_n", "greedy"):
        raise ValueError(f"unknown curve rule {rule!r}; valid: 'top_n', 'greedy'")
    sizes = list(sizes) if sizes is not None else default_sizes(graph.n_edges)
    out: dict[str, list[float]] = {"n_edges_requested": [], "n_edges": [], "fraction": [], "faithfulness": [],
                                   "metric": []}
    for i, n in enumerate(sizes):
        mask = prune(graph, attribution.scores, **{"top_n" if rule == "top_n" else "greedy": int(n)})
        m = eap.patched_metric(model, graph, batch, mask, attribution.metric, attribution.corrupted_outputs)
        f = normalized_faithfulness(m, attribution.metric_clean, attribution.metric_corrupted)
        k = int(mask.sum())
        out["n_edges_requested"].append(int(n))
        out["n_edges"].append(k)
        out["fraction"].append(k / graph.n_edges)
        out["faithfulness"].append(f)
        out["metric"].append(float(m.mean()))
        logger.info("circuit of %d edges (%.2f%%): faithfulness %.3f", k, 100 * k / graph.n_edges, f)
        if on_unit is not None:
            on_unit(i + 1, len(sizes))
    return out
