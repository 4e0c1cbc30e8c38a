"""Roles of the nodes of a knowledge circuit, each with the evidence it was classified on.

Knowledge-circuit analyses (Yao et al. 2024) find three kinds of components at work when a model
recalls ``(subject, relation) -> object``:

* **mover heads**: the last token attends to the subject, and the head's output, read through the
  unembedding (direct logit attribution), promotes the object;
* **relation heads**: the last token attends to the relation words (the prompt outside the subject
  and BOS);
* **object-writing MLPs**: MLPs whose output, read through the unembedding, promotes the object.

Evidence per node (averaged over the batch, at each example's last token): attention mass on the
subject and on the relation tokens (heads), the direct logit attribution to the object
(:func:`knowscope.circuits.circuit.node_logit_attribution`), and the object's rank among all tokens
in the node's own logit-lens reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from knowscope import hooks as hk
from knowscope.circuits import eap
from knowscope.circuits.batches import CircuitBatch, make_batch
from knowscope.circuits.circuit import Circuit, node_logit_attribution
from knowscope.circuits.graph import Graph
from knowscope.facts import Fact
from knowscope.models import Model

ROLES = ("mover", "relation", "object_writer", "other")


@dataclass
class NodeRole:
    """One node's role and the numbers behind it."""

    node: str
    role: str
    evidence: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "role": self.role, **self.evidence}


@dataclass
class RoleReport:
    """Roles of a circuit's nodes (heads and MLPs; the input is left out)."""

    roles: list[NodeRole]
    settings: dict[str, Any] = field(default_factory=dict)

    def by_role(self, role: str) -> list[NodeRole]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
        return [r for r in self.roles if r.role == role]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "roles": [r.to_dict() for r in self.roles],
                "counts": {k: len(self.by_role(k)) for k in ROLES}}

    def figure(self) -> Any:
        """Bar chart of each node's direct logit attribution to the object, coloured by role."""
        import plotly.graph_objects as go

        colours = {"mover": "#d62728", "relation": "#1f77b4", "object_writer": "#9467bd", "other": "#aaaaaa"}
        fig = go.Figure()
        for role in ROLES:
            rows = self.by_role(role)
            if rows:
                fig.add_trace(go.Bar(x=[r.node for r in rows], y=[r.evidence["object_dla"] for r in rows],
                                     name=role, marker_color=colours[role]))
        fig.update_layout(xaxis_title="node", yaxis_title="direct logit attribution to the object", barmode="group")
        return fig


def _relation_positions(batch: CircuitBatch) -> list[list[int]]:
    out = []
    for (a, b), last in zip(batch.subject_spans, batch.last.tolist(), strict=True):
        out.append([p for p in range(1, last + 1) if not a <= p < b])
    return out


@torch.no_grad()
def head_roles(
    model: Model,
    circuit: Circuit,
    facts: Sequence[Fact] | CircuitBatch,
    *,
    attention_threshold: float = 0.3,
    top_k: int = 100,
    min_dla: float = 0.0,
) -> RoleReport:
    """Classify the circuit's heads and MLPs (see the module docstring).

    A head is a *mover* when its attention from the last token to the subject is at least
    ``attention_threshold`` and its direct logit attribution to the object is above ``min_dla``
    with the object among its ``top_k`` logit-lens tokens (100 of SmolLM2's 49,152: the top 0.2%);
    else a *relation* head when its attention to the relation tokens is at least
    ``attention_threshold``. An MLP is an
    *object writer* under the same DLA and rank rule. Everything else is ``other``.
    """
    if not 0 <= attention_threshold <= 1:
        raise ValueError(f"attention_threshold must be in [0, 1], got {attention_threshold!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    batch = facts if isinstance(facts, CircuitBatch) else make_batch(model, facts, "noise", scale=0.0)
    graph: Graph = circuit.graph
    if graph != Graph.from_model(model):
        raise ValueError(f"circuit graph {graph.to_dict()} does not match the model "
                         f"{Graph.from_model(model).to_dict()}")
    outputs, _ = eap.record_outputs(model, graph, batch.clean)
    dla = node_logit_attribution(model, graph, batch, outputs)  # [batch, node]
    names = [hk.pattern(layer) for layer in range(graph.n_layers)]
    _, cache = model.bridge.run_with_cache(batch.clean.to(model.device), names_filter=lambda n: n in names)
    rows = torch.arange(batch.size)
    last = batch.last.cpu()
    subj = torch.zeros(batch.size, batch.clean.shape[1])
    rel = torch.zeros_like(subj)
    for i, ((a, b), rpos) in enumerate(zip(batch.subject_spans, _relation_positions(batch), strict=True)):
        subj[i, a:b] = 1
        rel[i, rpos] = 1
    # logit-lens rank of the object in each node's output
    ln = model.bridge.ln_final.original_component
    unembed = model.hf.get_output_embeddings().weight.float()
    x = outputs[rows.to(outputs.device), batch.last.to(outputs.device)].float()  # [batch, node, d]
    if getattr(ln, "weight", None) is not None:
        x = x * ln.weight.float()
    lens = torch.einsum("bnd,vd->bnv", x, unembed)
    ans = batch.answer.to(lens.device)
    obj = lens.gather(2, ans[:, None, None].expand(-1, lens.shape[1], 1))
    rank = (lens > obj).sum(-1).float().cpu()  # [batch, node]
    roles = []
    used = circuit.node_mask()
    for u in used.nonzero().flatten().tolist():
        kind = graph.node_kind[u]
        if kind == "input":
            continue
        ev = {"object_dla": float(dla[:, u].mean()), "object_rank": float(rank[:, u].median())}
        promotes = ev["object_dla"] > min_dla and ev["object_rank"] < top_k
        if kind == "head":
            layer = int(graph.node_layer[u])
            head = u - graph.head_node(layer, 0)
            pattern = cache[names[layer]][:, head].float().cpu()  # [batch, q, k]
            at_last = pattern[rows, last]  # [batch, k]
            ev["attention_to_subject"] = float((at_last * subj).sum(-1).mean())
            ev["attention_to_relation"] = float((at_last * rel).sum(-1).mean())
            if ev["attention_to_subject"] >= attention_threshold and promotes:
                role = "mover"
            elif ev["attention_to_relation"] >= attention_threshold:
                role = "relation"
            else:
                role = "other"
        else:
            role = "object_writer" if promotes else "other"
        roles.append(NodeRole(node=graph.node_names[u], role=role, evidence=ev))
    return RoleReport(roles=roles, settings={"attention_threshold": attention_threshold, "top_k": top_k,
                                             "min_dla": min_dla, "prompts": batch.prompts})
