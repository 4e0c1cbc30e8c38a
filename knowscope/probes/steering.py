"""Steering directions per attention head, in the style of SafetyLock (and ITI before it).

For each head, the activations ``z`` (the head's output before the output projection, hook
``attn.hook_z``) at the last token of a *safe* and an *unsafe* response to the same harmful prompt
are collected. Per head:

* ``direction`` = unit vector of mean(safe) − mean(unsafe);
* ``accuracy`` = held-out accuracy of the mean-difference probe along it;
* ``sigma`` = standard deviation of all activations projected on the direction.

The ``top_k`` heads by accuracy form a :class:`SteeringVector`. Applied with strength ``α``, each
chosen head's ``z`` gets ``α · σ · direction`` added at every position — either by a forward hook
(:meth:`SteeringVector.hooks`) or baked into the attention output projection's bias
(:meth:`SteeringVector.as_edit`, an :class:`~knowscope.editing.EditResult`), which is the same
function because the projection is linear: ``W_O (z + c) = W_O z + W_O c``. ``α < 0`` steers the
other way. Models whose output projection has no bias (Llama) get a zero bias installed first
(:func:`ensure_attn_out_bias`); outputs are unchanged by that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from knowscope.editing.result import EditResult
from knowscope.models import Model
from knowscope.probes.linear import collect_activations, fit_probe
from knowscope.results import load_dir, save_dir
from knowscope.safety.chat import pair_ids
from knowscope.safety.data import SafetyItem

KIND = "steering_vector"
_ATTN_OUT = ("self_attn.o_proj.weight", "attn.o.weight", "attn.c_proj.weight", "attn.out_proj.weight",
             "self_attention.dense.weight", "attention.dense.weight")


def attn_out_name(model: Model, layer: int) -> str:
    """Clean HF name of ``layer``'s attention output projection weight."""
    block = model.arch.mlp_out_name(layer).split(".mlp.")[0]
    params = model.named_parameters()
    for suffix in _ATTN_OUT:
        if f"{block}.{suffix}" in params:
            return f"{block}.{suffix}"
    raise ValueError(f"cannot find the attention output projection of layer {layer} under {block!r}")


def _owner(model: Model, weight_name: str) -> nn.Module:
    w = model.named_parameters()[weight_name]
    for mod in model.hf.modules():
        if getattr(mod, "weight", None) is w and not list(mod.children()):
            return mod
    raise ValueError(f"no module owns {weight_name}")


def ensure_attn_out_bias(model: Model, layers: Sequence[int]) -> list[str]:
    """Give each layer's attention output projection a bias (zeros) if it has none; returns bias names."""
    names = []
    for layer in layers:
        wname = attn_out_name(model, layer)
        bname = wname[: -len("weight")] + "bias"
        if bname not in model.named_parameters():
            mod = _owner(model, wname)
            w = mod.weight
            out_dim = w.shape[0] if isinstance(mod, nn.Linear) else w.shape[1]
            mod.bias = nn.Parameter(torch.zeros(out_dim, dtype=w.dtype, device=w.device), requires_grad=False)
            if bname not in model.named_parameters():
                raise ValueError(f"installed a bias on {wname} but it is not named {bname}")
        names.append(bname)
    return names


def _w_o(model: Model, layer: int) -> Float[Tensor, "d_model n_heads_d_head"]:
    mod = _owner(model, attn_out_name(model, layer))
    w = mod.weight.detach().float()
    return w if isinstance(mod, nn.Linear) else w.T  # Conv1D stores [in, out]


@dataclass
class SteeringVector:
    """Chosen heads, their unit directions in ``z`` space, spreads σ and probe accuracies."""

    heads: list[tuple[int, int]]
    directions: Float[Tensor, "k d_head"]
    sigma: Float[Tensor, " k"]
    accuracy: Float[Tensor, " k"]
    all_accuracy: Float[Tensor, "n_layers n_heads"] = field(default_factory=lambda: torch.zeros(0, 0))
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def _shift(self, alpha: float) -> dict[int, dict[int, Tensor]]:
        by_layer: dict[int, dict[int, Tensor]] = {}
        for (layer, head), d, s in zip(self.heads, self.directions, self.sigma, strict=True):
            by_layer.setdefault(layer, {})[head] = alpha * float(s) * d
        return by_layer

    def hooks(self, model: Model, alpha: float) -> list[tuple[str, Any]]:
        """Forward hooks adding ``α σ direction`` to each chosen head's ``z`` at every position."""
        hooks = []
        for layer, heads in self._shift(alpha).items():
            def add(z: Tensor, hook: Any, heads: dict[int, Tensor] = heads) -> Tensor:
                z = z.clone()
                for h, c in heads.items():
                    z[:, :, h] += c.to(z.device, z.dtype)
                return z

            hooks.append((model.arch.hook_z(layer), add))
        return hooks

    def as_edit(self, model: Model, alpha: float) -> EditResult:
        """The same steering as bias deltas of the attention output projections (apply with EditSession)."""
        self._check(model)
        shifts = self._shift(alpha)
        names = ensure_attn_out_bias(model, list(shifts))
        d_head = model.arch.d_head
        deltas = {}
        for (layer, heads), name in zip(shifts.items(), names, strict=True):
            W = _w_o(model, layer)
            total = torch.zeros(W.shape[0])
            for h, c in heads.items():
                total += W[:, h * d_head : (h + 1) * d_head] @ c.float()
            deltas[name] = total.to(model.named_parameters()[name].dtype)
        return EditResult(method="steering", deltas=deltas, fingerprint=model.fingerprint,
                          layers=sorted(shifts), hparams={"alpha": alpha, "heads": [list(h) for h in self.heads]},
                          model_name=model.name)

    def _check(self, model: Model) -> None:
        if self.fingerprint and self.fingerprint != model.fingerprint:
            raise ValueError(f"steering vector was fitted on another model (fingerprint {self.fingerprint})")

    def save(self, path: str | Path) -> Path:
        return save_dir(path, KIND, {"heads": [list(h) for h in self.heads], "fingerprint": self.fingerprint,
                                     "meta": self.meta},
                        {"directions": self.directions, "sigma": self.sigma, "accuracy": self.accuracy,
                         "all_accuracy": self.all_accuracy})

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> SteeringVector:
        meta, a = load_dir(path, KIND)
        sv = cls(heads=[tuple(h) for h in meta["heads"]], directions=a["directions"], sigma=a["sigma"],
                 accuracy=a["accuracy"], all_accuracy=a["all_accuracy"], fingerprint=meta["fingerprint"],
                 meta=meta.get("meta", {}))
        if model is not None:
            sv._check(model)
        return sv

    def figure(self) -> Any:
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=self.all_accuracy.tolist(), colorscale="RdBu", zmid=0.5,
                                   colorbar={"title": "accuracy"}))
        fig.add_trace(go.Scatter(x=[h for _, h in self.heads], y=[layer for layer, _ in self.heads], mode="markers",
                                 marker={"symbol": "x", "color": "black"}, name="chosen"))
        fig.update_layout(title="Safe-vs-unsafe probe accuracy per head", xaxis_title="head", yaxis_title="layer",
                          template="plotly_white")
        return fig


def safety_rows(model: Model, items: Sequence[SafetyItem]) -> tuple[list[list[int]], list[list[int]]]:
    """Token rows: each item's adversarial prompt (chat format) + its safe / unsafe response."""
    safe = [sum(pair_ids(model, it.adversarial_prompt, it.safe_generation), []) for it in items]
    unsafe = [sum(pair_ids(model, it.adversarial_prompt, it.unsafe_generation), []) for it in items]
    return safe, unsafe


def fit_steering(model: Model, safe_rows: Sequence[Sequence[int]], unsafe_rows: Sequence[Sequence[int]],
                 top_k: int = 8, test_fraction: float = 0.25, seed: int = 0) -> SteeringVector:
    """Per-head directions from token rows of safe and unsafe examples; keep the ``top_k`` heads."""
    n_layers, n_heads = model.arch.n_layers, model.arch.n_heads
    if not 1 <= top_k <= n_layers * n_heads:
        raise ValueError(f"top_k must be in [1, {n_layers * n_heads}], got {top_k}")
    hooks = [model.arch.hook_z(layer) for layer in range(n_layers)]
    pos = collect_activations(model, [], hooks, token_rows=safe_rows)
    neg = collect_activations(model, [], hooks, token_rows=unsafe_rows)
    acc = torch.zeros(n_layers, n_heads)
    dirs = torch.zeros(n_layers, n_heads, model.arch.d_head)
    sig = torch.zeros(n_layers, n_heads)
    for layer, h in enumerate(hooks):
        for head in range(n_heads):
            p, n = pos[h][:, head], neg[h][:, head]
            probe = fit_probe(p, n, "mean_diff", test_fraction, seed)
            acc[layer, head] = probe.accuracy
            d = p.mean(0) - n.mean(0)
            d = d / d.norm().clamp_min(1e-12)
            dirs[layer, head] = d
            sig[layer, head] = (torch.cat([p, n]) @ d).std()
    order = acc.flatten().argsort(descending=True)[:top_k]
    heads = [(int(i) // n_heads, int(i) % n_heads) for i in order]
    return SteeringVector(heads=heads, directions=torch.stack([dirs[layer, h] for layer, h in heads]),
                          sigma=torch.stack([sig[layer, h] for layer, h in heads]),
                          accuracy=torch.stack([acc[layer, h] for layer, h in heads]), all_accuracy=acc,
                          fingerprint=model.fingerprint, meta={"n_safe": len(safe_rows), "n_unsafe": len(unsafe_rows),
                                                               "top_k": top_k})


def fit_safety_steering(model: Model, items: Sequence[SafetyItem], top_k: int = 8, **kwargs: Any) -> SteeringVector:
    """:func:`fit_steering` on SafeEdit items (adversarial prompt + safe vs unsafe generation)."""
    safe, unsafe = safety_rows(model, items)
    return fit_steering(model, safe, unsafe, top_k=top_k, **kwargs)


def steering_sweep(model: Model, sv: SteeringVector, items: Sequence[SafetyItem], alphas: Sequence[float],
                   judge: Any = None, facts: Sequence[Any] | None = None,
                   max_new_tokens: int = 32) -> list[dict[str, Any]]:
    """Per ``α``: share of the items' adversarial prompts answered safely, and bundled-fact accuracy.

    The steering is applied as the bias edit (identical to the hooks) through an
    :class:`~knowscope.editing.EditSession`, so generation runs on the plain HF model and the
    weights are restored after each ``α``.
    """
    from knowscope.editing.result import EditSession
    from knowscope.knowledge import fact_accuracy
    from knowscope.safety.chat import respond
    from knowscope.safety.judge import get_judge

    judge = get_judge(judge)
    session = EditSession(model)
    rows = []
    for alpha in alphas:
        with session.temporary(sv.as_edit(model, float(alpha))):
            answers = respond(model, [it.adversarial_prompt for it in items], max_new_tokens=max_new_tokens)
            safe = judge.judge(answers, [it.adversarial_prompt for it in items])
            acc = fact_accuracy(model, facts).accuracy if facts else None
        rows.append({"alpha": float(alpha), "safe_share": sum(safe) / len(safe), "facts_accuracy": acc,
                     "example": answers[0][:200]})
    return rows
