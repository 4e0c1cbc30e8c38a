"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG) on a TransformerBridge.

Scores (Syed et al. 2023; Hanna et al. 2024): for an edge ``u -> v`` of :class:`~knowscope.circuits.graph.Graph`,

    score(u -> v) = sum over positions of (a_u^corrupted - a_u^clean) . d metric / d input_v,

averaged over examples. ``a_u`` is the output node ``u`` writes to the residual stream, ``input_v``
the residual-stream value slot ``v`` reads (a query / key / value input, an MLP input or the final
norm's input). The score is the first-order estimate of how much the metric changes when only that
edge carries its corrupted value. EAP takes the gradient on the clean input (one corrupted and one
clean forward pass, one backward pass); EAP-IG averages the gradient over ``ig_steps`` inputs whose
embeddings lie on the straight line from the corrupted to the clean embeddings (steps ``k / ig_steps``
for ``k = 1..ig_steps``).

How the slots are reached on TransformerLens 4: the bridge's split-QKV mode gives per-head query
inputs (``blocks.L.hook_q_input``) and per-KV-head key / value inputs (``hook_k_input``,
``hook_v_input``; on a GQA model these are shared by the query heads of a group); attention-result
mode gives per-head outputs (``attn.hook_result``). The bridge has no MLP-only input hook
(``hook_mlp_in`` sits on the residual stream), so the MLP slot is made here: the value at
``hook_resid_mid`` is copied into a branch that only the MLP reads, and ``mlp.hook_in`` is replaced
by the layer's own norm applied to that branch. Every slot's input is then exactly the sum of its
upstream nodes' outputs (plus the constant biases), which is what makes :func:`patched_metric`
exact: one forward pass on the clean input in which each slot reads, for every edge outside the
circuit, the corrupted output of its upstream node instead of the current one.

The batches of clean and corrupted prompts and the metric are built in :mod:`knowscope.circuits.batches`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from knowscope import hooks as hk
from knowscope.circuits.batches import METRICS, CircuitBatch, metric_values
from knowscope.circuits.graph import Graph
from knowscope.models import Model
from knowscope.work import OnUnit

logger = logging.getLogger(__name__)

METHODS = ("eap", "eap-ig")
CircuitMethod = Literal["eap", "eap-ig"]


# --------------------------------------------------------------------------------------------
# hooks


@contextlib.contextmanager
def edge_mode(model: Model) -> Iterator[None]:
    """Turn on the bridge's split-QKV-input and attention-result modes; restore them on exit."""
    bridge = model.bridge
    old = (bool(getattr(bridge.cfg, "use_split_qkv_input", False)), bool(getattr(bridge.cfg, "use_attn_result", False)))
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_attn_result(True)
    try:
        yield
    finally:
        bridge.set_use_split_qkv_input(old[0])
        bridge.set_use_attn_result(old[1])


def _embed_noise_hook(noise: Tensor) -> tuple[str, Any]:
    def hook(x: Tensor, hook: Any) -> Tensor:
        return x + noise[:, : x.shape[1]].to(x.dtype)

    return (hk.EMBED, hook)


def _record_hooks(graph: Graph, buf: Tensor) -> list[tuple[str, Any]]:
    """Hooks writing every forward node's output into ``buf[:, :, node]``."""

    def put(index: int | slice) -> Any:
        def hook(x: Tensor, hook: Any) -> None:
            buf[:, :, index] = x.detach()

        return hook

    hooks = [(hk.resid_pre(0), put(0))]
    for layer in range(graph.n_layers):
        h0 = graph.head_node(layer, 0)
        hooks.append((hk.attn_result(layer), put(slice(h0, h0 + graph.n_heads))))
        hooks.append((hk.mlp_out(layer), put(graph.mlp_node(layer))))
    return hooks


@torch.no_grad()
def record_outputs(
    model: Model, graph: Graph, tokens: Int[Tensor, "batch pos"], noise: Tensor | None = None
) -> tuple[Float[Tensor, "batch pos n_forward d_model"], Float[Tensor, "batch pos vocab"]]:
    """Every forward node's output (and the logits) on ``tokens`` (+ embedding noise)."""
    b, p = tokens.shape
    buf = torch.zeros(b, p, graph.n_forward, model.arch.d_model, device=model.device, dtype=model.dtype)
    hooks = _record_hooks(graph, buf)
    if noise is not None:
        hooks.insert(0, _embed_noise_hook(noise))
    with edge_mode(model), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(tokens.to(model.device))
    return buf, logits


def _mlp_branch_hooks(model: Model, layer: int, on_branch: Any) -> list[tuple[str, Any]]:
    """Give the MLP of ``layer`` its own copy of the residual stream.

    ``on_branch(x)`` receives the value at ``hook_resid_mid`` and returns the MLP's (pre-norm)
    input; the MLP then reads ``ln2(on_branch(x))`` through ``mlp.hook_in``.
    """
    state: dict[str, Tensor] = {}
    ln2 = model.bridge.blocks[layer].ln2

    def grab(x: Tensor, hook: Any) -> None:
        state["x"] = x

    def feed(x: Tensor, hook: Any) -> Tensor:
        return ln2(on_branch(state.pop("x")))

    return [(hk.resid_mid(layer), grab), (hk.mlp_in(layer), feed)]


def _slot_gradients(
    model: Model, graph: Graph, tokens: Tensor, new_input: Tensor, batch: CircuitBatch, metric: str
) -> tuple[Float[Tensor, "batch pos n_slots d_model"], Float[Tensor, " batch"]]:
    """d(sum of per-example metric)/d(each slot's input), with block 0's input replaced by ``new_input``."""
    slots: list[tuple[int | slice, Tensor]] = []

    def keep(index: int | slice) -> Any:
        def hook(x: Tensor, hook: Any) -> Tensor:
            slots.append((index, x))
            return x

        return hook

    def replace_input(x: Tensor, hook: Any) -> Tensor:
        return new_input

    hooks: list[tuple[str, Any]] = [(hk.resid_pre(0), replace_input)]
    for layer in range(graph.n_layers):
        H, K = graph.n_heads, graph.n_kv_heads
        q0, k0, v0 = graph.q_slot(layer, 0), graph.k_slot(layer, 0), graph.v_slot(layer, 0)
        hooks += [
            (hk.q_input(layer), keep(slice(q0, q0 + H))),
            (hk.k_input(layer), keep(slice(k0, k0 + K))),
            (hk.v_input(layer), keep(slice(v0, v0 + K))),
        ]
        mlp_index = graph.mlp_slot(layer)

        def branch(x: Tensor, _i: int = mlp_index) -> Tensor:
            y = x * 1.0  # a tensor of its own: its gradient is the MLP's alone
            slots.append((_i, y))
            return y

        hooks += _mlp_branch_hooks(model, layer, branch)
    hooks.append(("ln_final.hook_in", keep(graph.logits_slot)))
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(tokens.to(model.device))
        values = metric_values(logits, batch, metric)
        grads = torch.autograd.grad(values.sum(), [t for _, t in slots], allow_unused=True)
    b, p = tokens.shape
    out = torch.zeros(b, p, graph.n_slots, model.arch.d_model, device=model.device, dtype=torch.float32)
    for (index, _), g in zip(slots, grads, strict=True):
        if g is not None:
            out[:, :, index] = g.float()
    return out, values.detach()


# --------------------------------------------------------------------------------------------
# scores


@dataclass
class Attribution:
    """Edge scores and the metric on the clean and corrupted inputs (per example)."""

    graph: Graph
    scores: Float[Tensor, "n_forward n_slots"]
    metric_clean: Float[Tensor, " batch"]
    metric_corrupted: Float[Tensor, " batch"]
    method: str
    metric: str
    ig_steps: int
    corrupted_outputs: Float[Tensor, "batch pos n_forward d_model"] | None = None
    clean_outputs: Float[Tensor, "batch pos n_forward d_model"] | None = None


def attribute(
    model: Model,
    batch: CircuitBatch,
    method: str = "eap-ig",
    *,
    ig_steps: int = 5,
    metric: str = "logit_diff",
    graph: Graph | None = None,
    keep_corrupted: bool = True,
    on_unit: OnUnit | None = None,
) -> Attribution:
    """Score every edge of the model's graph with EAP or EAP-IG (see the module docstring).

    Returns an :class:`Attribution`; ``scores[u, v]`` is 0 where ``u -> v`` is not an edge. With
    ``keep_corrupted`` it also keeps every node's corrupted and clean outputs, so later exact
    patching (:func:`patched_metric`) needs no extra corrupted run. ``on_unit(k, steps)`` is called
    after each gradient pass (one per integrated-gradient step; :class:`knowscope.work.Work` times and
    cancels there).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if not isinstance(ig_steps, int) or ig_steps < 1:
        raise ValueError(f"ig_steps must be a positive integer, got {ig_steps!r}")
    graph = graph or Graph.from_model(model)
    corr, corr_logits = record_outputs(model, graph, batch.corrupted, batch.noise)
    clean, clean_logits = record_outputs(model, graph, batch.clean)
    with torch.no_grad():
        m_corr = metric_values(corr_logits, batch, metric)
        m_clean = metric_values(clean_logits, batch, metric)
    delta = (corr - clean).float()
    in_corr, in_clean = corr[:, :, 0], clean[:, :, 0]
    steps = 1 if method == "eap" else ig_steps
    grad_sum = None
    with edge_mode(model):
        for k in range(1, steps + 1):
            alpha = 1.0 if method == "eap" else k / steps
            new_input = (in_corr + alpha * (in_clean - in_corr)).detach().requires_grad_(True)
            g, _ = _slot_gradients(model, graph, batch.clean, new_input, batch, metric)
            grad_sum = g if grad_sum is None else grad_sum + g
            if on_unit is not None:
                on_unit(k, steps)
    assert grad_sum is not None
    grads = grad_sum / steps
    scores = torch.einsum("bpud,bpvd->uv", delta, grads) / batch.size
    scores = scores * graph.edge_mask.to(scores.device)
    logger.info("%s on %d example(s): clean %.3f, corrupted %.3f", method, batch.size, float(m_clean.mean()),
                float(m_corr.mean()))
    return Attribution(
        graph=graph,
        scores=scores.cpu(),
        metric_clean=m_clean.cpu(),
        metric_corrupted=m_corr.cpu(),
        method=method,
        metric=metric,
        ig_steps=steps,
        corrupted_outputs=corr if keep_corrupted else None,
        clean_outputs=clean if keep_corrupted else None,
    )


# --------------------------------------------------------------------------------------------
# exact edge patching


@torch.no_grad()
def patched_metric(
    model: Model,
    graph: Graph,
    batch: CircuitBatch,
    circuit: Bool[Tensor, "n_forward n_slots"],
    metric: str = "logit_diff",
    corrupted_outputs: Tensor | None = None,
) -> Float[Tensor, " batch"]:
    """The metric when every edge outside ``circuit`` carries its corrupted value (one forward pass).

    The clean input runs; each forward node's current output is recorded as the pass reaches it,
    and each slot's input gets ``sum over non-circuit edges u->v of (a_u^corrupted - a_u^current)``
    added. Since the slot input is the sum of its upstream outputs, the slot then reads exactly the
    circuit edges' current values plus the other edges' corrupted values.
    """
    if circuit.shape != (graph.n_forward, graph.n_slots):
        raise ValueError(f"circuit mask has shape {tuple(circuit.shape)}; expected {(graph.n_forward, graph.n_slots)}")
    if corrupted_outputs is None:
        corrupted_outputs, _ = record_outputs(model, graph, batch.corrupted, batch.noise)
    dev = model.device
    corr = corrupted_outputs.to(dev)
    off = (graph.edge_mask & ~circuit.bool().cpu()).to(dev, corr.dtype)  # 1 = corrupted edge
    diff = torch.zeros_like(corr)

    def put(index: int | slice) -> Any:
        def hook(x: Tensor, hook: Any) -> None:
            diff[:, :, index] = corr[:, :, index] - x

        return hook

    def add_heads(first: int, count: int, n_up: int) -> Any:
        def hook(x: Tensor, hook: Any) -> Tensor:
            w = off[:n_up, first : first + count]
            return x + torch.einsum("bpud,uh->bphd", diff[:, :, :n_up], w)

        return hook

    hooks: list[tuple[str, Any]] = [(hk.resid_pre(0), put(0))]
    for layer in range(graph.n_layers):
        H, K = graph.n_heads, graph.n_kv_heads
        n_attn = int(graph.n_upstream[graph.q_slot(layer, 0)])
        n_mlp = int(graph.n_upstream[graph.mlp_slot(layer)])
        hooks += [
            (hk.q_input(layer), add_heads(graph.q_slot(layer, 0), H, n_attn)),
            (hk.k_input(layer), add_heads(graph.k_slot(layer, 0), K, n_attn)),
            (hk.v_input(layer), add_heads(graph.v_slot(layer, 0), K, n_attn)),
        ]
        h0 = graph.head_node(layer, 0)
        hooks.append((hk.attn_result(layer), put(slice(h0, h0 + H))))
        mlp_slot = graph.mlp_slot(layer)

        def mlp_in(x: Tensor, _v: int = mlp_slot, _n: int = n_mlp) -> Tensor:
            return x + torch.einsum("bpud,u->bpd", diff[:, :, :_n], off[:_n, _v])

        hooks += _mlp_branch_hooks(model, layer, mlp_in)
        hooks.append((hk.mlp_out(layer), put(graph.mlp_node(layer))))

    def final(x: Tensor, hook: Any) -> Tensor:
        return x + torch.einsum("bpud,u->bpd", diff, off[:, graph.logits_slot])

    hooks.append(("ln_final.hook_in", final))
    with edge_mode(model), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.clean.to(dev))
    return metric_values(logits, batch, metric).cpu()
