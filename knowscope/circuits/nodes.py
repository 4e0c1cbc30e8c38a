"""A closer look at one node of a knowledge circuit: its role, where it attends, what it promotes.

The circuit explorer (and a notebook) selects a head or an MLP of a :class:`Circuit` and asks
:func:`node_detail` for

* its **role** in the circuit (:func:`knowscope.circuits.roles.head_roles`: mover / relation /
  object writer / other, with the evidence);
* for a head, its **attention pattern** on one of the circuit's prompts (``[query, key]``);
* what its **output promotes** through the unembedding at the last token: the node's output, scaled
  by the final norm's weight and the clean run's final-norm scale, read through the unembedding
  (the logit lens of one component; the same reading as the direct logit attribution).

A saved circuit keeps its prompts, subjects, templates and answers (``meta["batch"]``), so
:func:`circuit_facts` rebuilds the facts and nothing has to be traced again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope import hooks as hk
from knowscope.circuits import eap
from knowscope.circuits.batches import make_batch
from knowscope.circuits.circuit import Circuit, final_norm_scale, through_final_norm
from knowscope.circuits.graph import Graph
from knowscope.circuits.roles import NodeRole, head_roles
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.models.tokens import visible


@dataclass
class NodeDetail:
    """One node of a circuit on one of its prompts."""

    node: str
    kind: str  # "head" or "mlp"
    layer: int
    prompt: str
    tokens: list[str]
    role: NodeRole | None
    promotes: list[tuple[str, float]]  # (token, direct logit contribution), highest first
    demotes: list[tuple[str, float]]
    pattern: Float[Tensor, "query key"] | None = None  # heads only
    edges_in: list[dict[str, Any]] = field(default_factory=list)
    edges_out: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "layer": self.layer, "prompt": self.prompt,
                "tokens": self.tokens, "role": self.role.to_dict() if self.role else None,
                "promotes": self.promotes, "demotes": self.demotes,
                "pattern": self.pattern.tolist() if self.pattern is not None else None,
                "edges_in": self.edges_in, "edges_out": self.edges_out}

    def pattern_figure(self) -> Any:
        """The head's attention pattern as a query × key heatmap (``ValueError`` for an MLP)."""
        import plotly.graph_objects as go

        if self.pattern is None:
            raise ValueError(f"{self.node} is an MLP: it has no attention pattern")
        labels = [f"{i}: {visible(t)}" for i, t in enumerate(self.tokens)]
        fig = go.Figure(go.Heatmap(z=self.pattern.tolist(), x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                                   hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed", title_text="query")
        fig.update_xaxes(title_text="key")
        fig.update_layout(title=f"{self.node} attention on {self.prompt!r}", height=520)
        return fig

    def promotes_figure(self) -> Any:
        """Bar chart of the tokens the node's output promotes (and demotes) most at the last token."""
        import plotly.graph_objects as go

        rows = self.promotes + list(reversed(self.demotes))
        fig = go.Figure(go.Bar(x=[visible(t) for t, _ in rows], y=[v for _, v in rows],
                               marker_color=["#2ca02c" if v > 0 else "#d62728" for _, v in rows]))
        fig.update_layout(title=f"what {self.node} writes toward, read through the unembedding",
                          yaxis_title="direct logit contribution", xaxis_title="token")
        return fig


def circuit_facts(circuit: Circuit) -> list[Fact]:
    """The facts a circuit was computed on, rebuilt from its saved batch (templates, subjects, answers)."""
    batch = circuit.meta.get("batch") or {}
    templates, subjects, answers = batch.get("templates"), batch.get("subjects"), batch.get("answers")
    if not templates or not subjects or not answers:
        raise ValueError("this circuit does not record its facts (templates, subjects, answers); "
                         "recompute it with knowledge_circuit() to inspect its nodes")
    contrasts = batch.get("contrasts") or [None] * len(templates)
    relations = batch.get("relations") or [""]
    facts = []
    for t, s, a, c in zip(templates, subjects, answers, contrasts, strict=True):
        new = c if c and c.strip() and c.strip() != a.strip() else "?"
        facts.append(Fact(subject=s, prompt=t, target_true=a.strip(), target_new=new.strip() or "?",
                          relation_id=relations[0] if len(relations) == 1 else ""))
    return facts


@torch.no_grad()
def node_detail(model: Model, circuit: Circuit, node: str, *, example: int = 0, k: int = 10,
                facts: Sequence[Fact] | None = None) -> NodeDetail:
    """Role, attention pattern (heads) and promoted tokens of ``node`` on the circuit's ``example``-th prompt."""
    graph: Graph = circuit.graph
    saved_fp = circuit.meta.get("fingerprint")
    if saved_fp and getattr(model, "fingerprint", None) and saved_fp != model.fingerprint:
        raise ValueError(f"the circuit was computed on model {circuit.meta.get('model')!r} (fingerprint {saved_fp}), "
                         f"not on the loaded {getattr(model, 'name', '?')!r}; load that model (viewer: --model)")
    if graph != Graph.from_model(model):
        raise ValueError(f"the circuit was computed on another architecture ({graph.to_dict()}); "
                         "load the model it was computed on")
    u = graph.node_index(node)
    kind = graph.node_kind[u]
    if kind not in ("head", "mlp"):
        raise ValueError(f"{node!r} is the {kind} node; pick a head or an MLP")
    facts = list(facts) if facts is not None else circuit_facts(circuit)
    if not 0 <= example < len(facts):
        raise ValueError(f"example must be in 0..{len(facts) - 1}, got {example}")
    batch = make_batch(model, facts, "noise", scale=0.0)
    roles = head_roles(model, circuit, batch)
    role = next((r for r in roles.roles if r.node == node), None)
    outputs, _ = eap.record_outputs(model, graph, batch.clean)
    scale = final_norm_scale(model, batch)[example]  # [1]
    last = int(batch.last[example])
    x = through_final_norm(model, outputs[example, last, u], scale)
    logits = model.hf.get_output_embeddings().weight.float() @ x
    logits = logits - logits.mean()
    top, bottom = logits.topk(k), (-logits).topk(k)
    dec = model.tokenizer.decode
    promotes = [(dec([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True)]
    demotes = [(dec([int(i)]), -float(v)) for v, i in zip(bottom.values, bottom.indices, strict=True)]
    n_tok = last + 1
    tokens = [dec([int(t)]) for t in batch.clean[example, :n_tok].tolist()]
    layer = int(graph.node_layer[u])
    pattern = None
    if kind == "head":
        head = u - graph.head_node(layer, 0)
        name = hk.pattern(layer)
        _, cache = model.bridge.run_with_cache(batch.clean[example:example + 1].to(model.device),
                                               names_filter=lambda n: n == name)
        pattern = cache[name][0, head, :n_tok, :n_tok].float().cpu()
    edges = circuit.edges()
    mine = {graph.slot_names[v] for v in graph.slot_owner[:, u].nonzero().flatten().tolist()}
    return NodeDetail(
        node=node, kind=kind, layer=layer, prompt=batch.prompts[example], tokens=tokens, role=role,
        promotes=promotes, demotes=demotes, pattern=pattern,
        edges_in=[e for e in edges if e["target"] in mine],
        edges_out=[e for e in edges if e["source"] == node],
    )

