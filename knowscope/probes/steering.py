"""Steering directions per attention head, in the style of SafetyLock (and ITI before it).

For each head, the activations ``z`` (the head's output before the output projection, hook
``attn.hook_z``) at the last tokens (default 5, each a sample) of a *safe* and an *unsafe*
response to the same harmful prompt are collected. Per head:

* ``direction`` = unit vector of mean(safe) − mean(unsafe);
* ``accuracy`` = held-out accuracy (rows split into train and test) of a probe fitted on the
  training rows (logistic regression, as SafetyLock ranks heads);
* ``sigma`` = standard deviation of all activations projected on the direction.

The ``top_k`` heads (default 24, SafetyLock's) by accuracy, ties broken by effect size, form a
:class:`SteeringVector`. Applied with strength ``α``, each
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

from knowscope.chat import pair_ids, respond
from knowscope.editing.session import EditResult, EditSession
from knowscope.knowledge import fact_accuracy
from knowscope.models import Model
from knowscope.probes.linear import _accuracy, fit_probe, split
from knowscope.results import load_dir, register, save_dir
from knowscope.safeedit import SafetyItem
from knowscope.safety.judge import get_judge

KIND = "steering_vector"
WINDOWS = ("last", "first")
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


Rows = list[list[int]]


def safety_rows(model: Model, items: Sequence[SafetyItem]) -> tuple[Rows, Rows, list[int], list[int]]:
    """Token rows: each item's adversarial prompt (chat format) + its safe / unsafe response, and where
    each row's response starts."""
    safe, unsafe, s_start, u_start = [], [], [], []
    for it in items:
        head, resp = pair_ids(model, it.adversarial_prompt, it.safe_generation)
        safe.append(head + resp)
        s_start.append(len(head))
        head, resp = pair_ids(model, it.adversarial_prompt, it.unsafe_generation)
        unsafe.append(head + resp)
        u_start.append(len(head))
    return safe, unsafe, s_start, u_start


@torch.no_grad()
def _head_samples(model: Model, rows: Sequence[Sequence[int]], starts: Sequence[int] | None,
                  positions: int, window: str = "last") -> tuple[Float[Tensor, "n layer head d_head"], Tensor]:
    """Every head's ``z`` at the last (``window="last"``) or first (``"first"``) ``positions`` tokens of
    each row from its start on; also the row each sample came from."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    hooks = [model.arch.hook_z(layer) for layer in range(model.arch.n_layers)]
    wanted = set(hooks)
    samples, owner = [], []
    for i, r in enumerate(rows):
        start = starts[i] if starts is not None else 0
        first = max(len(r) - positions, start, 0) if window == "last" else max(start, 0)
        stop = len(r) if window == "last" else min(len(r), first + positions)
        if first >= stop:
            raise ValueError(f"row {i} has no tokens to take activations from (start {first}, length {len(r)})")
        _, cache = model.bridge.run_with_cache(torch.tensor([list(r)], device=model.device),
                                               names_filter=lambda name: name in wanted)
        z = torch.stack([cache[h][0, first:stop] for h in hooks], dim=1).float().cpu()  # [pos, layer, head, d]
        samples.append(z)
        owner += [i] * z.shape[0]
    return torch.cat(samples), torch.tensor(owner)


def fit_steering(model: Model, safe_rows: Sequence[Sequence[int]], unsafe_rows: Sequence[Sequence[int]],
                 top_k: int = 24, test_fraction: float = 0.25, seed: int = 0, positions: int = 5,
                 safe_starts: Sequence[int] | None = None, unsafe_starts: Sequence[int] | None = None,
                 method: str = "logistic", window: str = "last") -> SteeringVector:
    """Per-head directions from token rows of safe and unsafe examples; keep the ``top_k`` heads.

    As SafetyLock: every one of a row's last ``positions`` tokens (from its start on, e.g. the
    response) is a sample (``window="first"``: its first ``positions`` tokens from the start, where a
    refusal and a compliance differ most: "I'm sorry, ..." vs "Sure, here is ..."); each head's
    ``method`` probe (SafetyLock: logistic regression) is fitted on
    the training rows and its accuracy measured on held-out rows (split by row, so no row is on both
    sides); the ``top_k`` heads by held-out accuracy are kept, ties broken by the effect size
    ``|Δμ| / σ``. A head's direction is the unit mean difference safe − unsafe over all samples and σ
    the spread of all samples along it.
    """

    n_layers, n_heads = model.arch.n_layers, model.arch.n_heads
    if not 1 <= top_k <= n_layers * n_heads:
        raise ValueError(f"top_k must be in [1, {n_layers * n_heads}], got {top_k}")
    if positions < 1:
        raise ValueError(f"positions must be >= 1, got {positions}")
    if len(safe_rows) < 2 or len(unsafe_rows) < 2:
        raise ValueError(f"need at least 2 rows per class, got {len(safe_rows)} and {len(unsafe_rows)}")
    pos, pos_row = _head_samples(model, safe_rows, safe_starts, positions, window)
    neg, neg_row = _head_samples(model, unsafe_rows, unsafe_starts, positions, window)
    tr_p, te_p = split(len(safe_rows), test_fraction, seed)
    tr_n, te_n = split(len(unsafe_rows), test_fraction, seed + 1)
    p_train, p_test = torch.isin(pos_row, tr_p), torch.isin(pos_row, te_p)
    n_train, n_test = torch.isin(neg_row, tr_n), torch.isin(neg_row, te_n)
    acc = torch.zeros(n_layers, n_heads)
    effect = torch.zeros(n_layers, n_heads)
    dirs = torch.zeros(n_layers, n_heads, model.arch.d_head)
    sig = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            p, n = pos[:, layer, head], neg[:, layer, head]
            probe = fit_probe(p[p_train], n[n_train], method, test_fraction=0.0, seed=seed)
            acc[layer, head] = _accuracy(probe, p[p_test], n[n_test]) if p_test.any() and n_test.any() \
                else probe.train_accuracy
            diff = p.mean(0) - n.mean(0)
            d = diff / diff.norm().clamp_min(1e-12)
            dirs[layer, head] = d
            sig[layer, head] = (torch.cat([p, n]) @ d).std()
            effect[layer, head] = diff.norm() / sig[layer, head].clamp_min(1e-12)
    flat_acc, flat_eff = acc.flatten(), effect.flatten()
    order = sorted(range(n_layers * n_heads), key=lambda i: (-float(flat_acc[i]), -float(flat_eff[i])))[:top_k]
    heads = [(i // n_heads, i % n_heads) for i in order]
    return SteeringVector(heads=heads, directions=torch.stack([dirs[layer, h] for layer, h in heads]),
                          sigma=torch.stack([sig[layer, h] for layer, h in heads]),
                          accuracy=torch.stack([acc[layer, h] for layer, h in heads]), all_accuracy=acc,
                          fingerprint=model.fingerprint,
                          meta={"n_safe": len(safe_rows), "n_unsafe": len(unsafe_rows), "top_k": top_k,
                                "positions": positions, "window": window, "method": method,
                                "test_fraction": test_fraction,
                                "effect_size": [float(effect[layer, h]) for layer, h in heads]})


def fit_safety_steering(model: Model, items: Sequence[SafetyItem], top_k: int = 24, **kwargs: Any) -> SteeringVector:
    """:func:`fit_steering` on SafeEdit items: the last tokens of the safe vs the unsafe response to
    each item's adversarial prompt (chat format)."""
    safe, unsafe, s_start, u_start = safety_rows(model, items)
    return fit_steering(model, safe, unsafe, top_k=top_k, safe_starts=s_start, unsafe_starts=u_start, **kwargs)


def steering_sweep(model: Model, sv: SteeringVector, items: Sequence[SafetyItem], alphas: Sequence[float],
                   judge: Any = None, facts: Sequence[Any] | None = None,
                   max_new_tokens: int = 32) -> list[dict[str, Any]]:
    """Per ``α``: share of the items' adversarial prompts answered safely, and bundled-fact accuracy.

    The steering is applied as the bias edit (identical to the hooks) through an
    :class:`~knowscope.editing.EditSession`, so generation runs on the plain HF model and the
    weights are restored after each ``α``.
    """

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


register(KIND, SteeringVector.load, lambda m: f"{len(m.get('heads') or [])} heads")
