"""Activation shift: how much an edit (or another model) moves each layer's activations on prompts.

For every layer and position, the residual stream after the block, the MLP output and the
attention output are read from the *before* and the *after* state on the same prompts; the shift
is the L2 norm of the difference, the relative shift divides by the before norm, and the cosine
similarity says whether the direction changed. :class:`ActivationShift` keeps the per-position
arrays (padding masked) and summarises per layer: which layers moved most.

Two ways to get the states:

* :func:`activation_shift` with an :class:`~knowscope.editing.EditSession` and an edit: before =
  the session's unedited weights, after = with the edit applied (no copy of the model);
* :func:`compare_models` for two models with the same tokenizer and depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.models import Model
from knowscope.models.tokens import decode_each, pieces_text, visible
from knowscope.results import load_dir, register, save_dir

KIND = "activation_shift"
COMPONENTS = ("resid", "mlp", "attn")


def _hooks(model: Model, component: str, layer: int) -> str:
    return {"resid": model.arch.hook_resid_post, "mlp": model.arch.hook_mlp_out,
            "attn": model.arch.hook_attn_out}[component](layer)


@torch.no_grad()
def collect(model: Model, prompts: Sequence[str]) -> tuple[dict[str, Tensor], Tensor, list[list[str]]]:
    """Activations ``{component: [n_layers, n_prompts, max_pos, d_model]}``, the position mask, tokens."""
    n = model.arch.n_layers
    rows = [model.to_tokens(p)[0].tolist() for p in prompts]
    width = max(len(r) for r in rows)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    out = {c: torch.zeros(n, len(rows), width, model.arch.d_model) for c in COMPONENTS}
    names = {_hooks(model, c, layer): (c, layer) for c in COMPONENTS for layer in range(n)}
    for i, r in enumerate(rows):  # one prompt at a time: no padding inside the model
        _, cache = model.bridge.run_with_cache(torch.tensor([r], device=model.device),
                                               names_filter=lambda name: name in names)
        for name, (c, layer) in names.items():
            out[c][layer, i, : len(r)] = cache[name][0].float().cpu()
        mask[i, : len(r)] = True
    tokens = [decode_each(model.tokenizer, r) for r in rows]
    return out, mask, tokens


@dataclass
class ActivationShift:
    """Per component, layer, prompt and position: norm shift, relative shift and cosine."""

    prompts: list[str]
    tokens: list[list[str]]
    mask: Tensor  # [n_prompts, max_pos]
    norm: dict[str, Float[Tensor, "n_layers n_prompts max_pos"]]
    relative: dict[str, Float[Tensor, "n_layers n_prompts max_pos"]]
    cosine: dict[str, Float[Tensor, "n_layers n_prompts max_pos"]]
    meta: dict[str, Any] = field(default_factory=dict)

    def by_layer(self, component: str = "resid", stat: str = "norm") -> Float[Tensor, " n_layers"]:
        """Mean over real positions of ``stat`` (``norm``, ``relative`` or ``cosine``) per layer."""
        values = getattr(self, stat)[component]
        m = self.mask[None].float()
        return (values * m).sum((1, 2)) / m.sum((1, 2))

    def top_layers(self, k: int = 3, component: str = "resid", stat: str = "relative") -> list[int]:
        """The ``k`` layers that moved most (by mean relative shift)."""
        return [int(i) for i in self.by_layer(component, stat).argsort(descending=True)[:k]]

    def summary(self) -> dict[str, Any]:
        return {c: {"norm": self.by_layer(c, "norm").tolist(), "relative": self.by_layer(c, "relative").tolist(),
                    "cosine": self.by_layer(c, "cosine").tolist(), "top_layers": self.top_layers(component=c)}
                for c in COMPONENTS}

    def save(self, path: str | Path) -> Path:
        arrays = {"mask": self.mask.to(torch.uint8)}
        for c in COMPONENTS:
            arrays[f"norm/{c}"] = self.norm[c]
            arrays[f"relative/{c}"] = self.relative[c]
            arrays[f"cosine/{c}"] = self.cosine[c]
        return save_dir(path, KIND, {"prompts": self.prompts, "tokens": self.tokens, "meta": self.meta,
                                     "token_text": "decoded", "summary": self.summary()}, arrays)

    @classmethod
    def load(cls, path: str | Path) -> ActivationShift:
        meta, arrays = load_dir(path, KIND)
        # shifts saved before tokens were decoded hold byte-level BPE pieces: read them as text
        tokens = meta["tokens"] if meta.get("token_text") == "decoded" else pieces_text(meta["tokens"])
        return cls(prompts=meta["prompts"], tokens=tokens, mask=arrays["mask"].bool(),
                   norm={c: arrays[f"norm/{c}"] for c in COMPONENTS},
                   relative={c: arrays[f"relative/{c}"] for c in COMPONENTS},
                   cosine={c: arrays[f"cosine/{c}"] for c in COMPONENTS}, meta=meta.get("meta", {}))

    def figure(self, component: str = "resid", prompt: int | None = None) -> Any:
        """Relative shift as a layer × token heatmap for one prompt, or a per-layer line for all."""
        import plotly.graph_objects as go

        if prompt is None:
            fig = go.Figure([go.Scatter(y=self.by_layer(c, "relative").tolist(), mode="lines+markers", name=c)
                             for c in COMPONENTS])
            fig.update_layout(title="Activation shift by layer (mean relative change)", xaxis_title="layer",
                              yaxis_title="‖after − before‖ / ‖before‖", template="plotly_white")
            return fig
        n_pos = int(self.mask[prompt].sum())
        z = self.relative[component][:, prompt, :n_pos]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=[f"{i}:{visible(t)}" for i, t in enumerate(self.tokens[prompt])],
                                   colorscale="Viridis", colorbar={"title": "relative"}))
        fig.update_layout(title=f"{component} shift: {self.prompts[prompt]!r}", xaxis_title="token",
                          yaxis_title="layer", template="plotly_white")
        return fig


def shift_between(before: dict[str, Tensor], after: dict[str, Tensor], mask: Tensor, prompts: Sequence[str],
                  tokens: list[list[str]], meta: dict[str, Any] | None = None) -> ActivationShift:
    norm, rel, cos = {}, {}, {}
    m = mask[None].float()
    for c in COMPONENTS:
        diff = after[c] - before[c]
        norm[c] = diff.norm(dim=-1) * m
        rel[c] = norm[c] / before[c].norm(dim=-1).clamp_min(1e-6) * m
        c_sim = torch.nn.functional.cosine_similarity(after[c], before[c], dim=-1, eps=1e-8)
        cos[c] = torch.where(norm[c] == 0, torch.ones_like(c_sim), c_sim) * m  # unchanged (even zero) → 1
    return ActivationShift(prompts=list(prompts), tokens=tokens, mask=mask, norm=norm, relative=rel, cosine=cos,
                           meta=meta or {})


def activation_shift(session: Any, prompts: Sequence[str], edit: Any = None) -> ActivationShift:
    """Shift caused by the session's edits (``edit=None``) or by ``edit`` on top of them.

    before = the unedited weights (``session.unedited()``), after = the session's current state,
    with ``edit`` applied temporarily when given. The model is never copied and ends as it began.
    """
    if not prompts:
        raise ValueError("no prompts to compare")
    model = session.model
    with session.unedited():
        before, mask, tokens = collect(model, prompts)
    if edit is not None:
        with session.temporary(edit):
            after, _, _ = collect(model, prompts)
        meta = {"edit": edit.method, "layers": list(edit.layers)}
    else:
        after, _, _ = collect(model, prompts)
        meta = {"edit": "session", "n_edits": len(session.history)}
    meta.update({"model_name": model.name, "fingerprint": model.fingerprint})
    return shift_between(before, after, mask, prompts, tokens, meta)


def compare_models(before: Model, after: Model, prompts: Sequence[str]) -> ActivationShift:
    """Shift between two models with the same tokenizer, depth and width."""
    if before.arch.n_layers != after.arch.n_layers or before.arch.d_model != after.arch.d_model:
        raise ValueError(f"models differ in shape: {before.arch.n_layers}x{before.arch.d_model} vs "
                         f"{after.arch.n_layers}x{after.arch.d_model}")
    if not prompts:
        raise ValueError("no prompts to compare")
    a, mask, tokens = collect(before, prompts)
    b, mask_b, tokens_b = collect(after, prompts)
    if tokens != tokens_b:
        raise ValueError("the two models tokenize the prompts differently; compare models with one tokenizer")
    return shift_between(a, b, mask, prompts, tokens, {"before": before.name, "after": after.name})


def _headline(m: dict[str, Any]) -> str:
    top = ((m.get("summary") or {}).get("resid") or {}).get("top_layers")
    return f"{len(m.get('prompts', []))} prompts; residual moved most at layers {top}"


register(KIND, ActivationShift.load, _headline)
