"""Toxic-region localization (DINM, Wang et al. 2024): the layer whose hidden states separate a safe
from an unsafe response most.

For one SafeEdit item, the safe and the unsafe generation are run through the model and, for every
layer, the distance between their hidden states (the residual stream after the block) is taken;
the toxic layer is the argmax. The same distance on each layer's MLP output says how much of that
separation the layer's MLP writes itself. Every item is located on its own (EasyEdit locates the
first item and reuses its layer for all later ones).

Choices, stated because they differ from EasyEdit's code:

* hidden states are pooled over the response tokens (mean) before the distance, so responses of
  different lengths compare without padding tokens entering the norm (EasyEdit left-pads both
  sequences with EOS and takes the Frobenius norm over all positions, pads included);
* every layer's residual is read *before* the final norm (EasyEdit's last entry is after it);
* ``context="none"`` runs each response alone after BOS, as DINM does; ``context="prompt"`` runs
  it after the adversarial prompt (chat template), i.e. the states DINM then tunes.

``distance="l2"`` is DINM's Euclidean distance; ``"relative"`` divides it by the mean norm of the
two pooled states, which removes the growth of the residual norm with depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.chat import input_ids
from knowscope.models import Model
from knowscope.results import load_dir, register, save_dir
from knowscope.safeedit import SafetyItem

KIND = "toxic_region"
DISTANCES = ("l2", "relative")
CONTEXTS = ("none", "prompt")


@dataclass
class ToxicRegion:
    """Where one item's safe and unsafe responses part ways, layer by layer.

    ``profile`` is the distance used for the choice (``distance``); ``l2`` and ``relative`` hold
    both; ``mlp_shift`` is the same distance between the two responses' MLP outputs per layer.
    """

    item_id: int | str
    layer: int
    distance: str
    context: str
    l2: Float[Tensor, " n_layers"]
    relative: Float[Tensor, " n_layers"]
    mlp_shift: Float[Tensor, " n_layers"]
    model_name: str = ""
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def profile(self) -> Float[Tensor, " n_layers"]:
        return self.l2 if self.distance == "l2" else self.relative

    @property
    def mlp_layer(self) -> int:
        """The layer whose MLP output differs most between the two responses."""
        return int(self.mlp_shift.argmax())

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "layer": self.layer, "distance": self.distance, "context": self.context,
                "model_name": self.model_name, "fingerprint": self.fingerprint, "meta": self.meta,
                "profile": self.profile.tolist(), "mlp_shift": self.mlp_shift.tolist()}

    def save(self, path: str | Path) -> Path:
        meta = {k: v for k, v in self.to_dict().items() if k not in ("profile", "mlp_shift")}
        return save_dir(path, KIND, meta, {"l2": self.l2, "relative": self.relative, "mlp_shift": self.mlp_shift})

    @classmethod
    def load(cls, path: str | Path) -> ToxicRegion:
        meta, arrays = load_dir(path, KIND)
        return cls(item_id=meta["item_id"], layer=meta["layer"], distance=meta["distance"], context=meta["context"],
                   l2=arrays["l2"], relative=arrays["relative"], mlp_shift=arrays["mlp_shift"],
                   model_name=meta.get("model_name", ""), fingerprint=meta.get("fingerprint", ""),
                   meta=meta.get("meta", {}))

    def figure(self) -> Any:
        """Distance per layer (hidden states and MLP outputs), the toxic layer marked."""
        import plotly.graph_objects as go

        layers = list(range(len(self.l2)))
        fig = go.Figure([
            go.Scatter(x=layers, y=self.profile.tolist(), mode="lines+markers", name=f"hidden ({self.distance})"),
            go.Scatter(x=layers, y=(self.mlp_shift / self.mlp_shift.max().clamp_min(1e-12) *
                                    self.profile.max()).tolist(),
                       mode="lines", name="MLP output (scaled)", line={"dash": "dot"}),
        ])
        fig.add_vline(x=self.layer, line_dash="dash", annotation_text=f"toxic layer {self.layer}")
        fig.update_layout(title=f"Safe vs unsafe response, item {self.item_id}", xaxis_title="layer",
                          yaxis_title="distance", template="plotly_white")
        return fig


def response_ids(model: Model, item: SafetyItem, response: str, context: str) -> tuple[list[int], int]:
    """Token ids and the index where the response starts."""
    resp = list(model.tokenizer.encode(response, add_special_tokens=False))
    if not resp:
        raise ValueError(f"item {item.id!r}: a response tokenizes to nothing")
    head = input_ids(model, item.adversarial_prompt) if context == "prompt" else model.to_tokens("")[0].tolist()
    return head + resp, len(head)


@torch.no_grad()
def pooled_states(model: Model, ids: list[int], start: int) -> tuple[Tensor, Tensor]:
    """Mean over response positions of each layer's residual after the block and MLP output."""
    n = model.arch.n_layers
    names = {model.arch.hook_resid_post(i) for i in range(n)} | {model.arch.hook_mlp_out(i) for i in range(n)}
    tokens = torch.tensor([ids], device=model.device)
    _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    resid = torch.stack([cache[model.arch.hook_resid_post(i)][0, start:].float().mean(0) for i in range(n)])
    mlp = torch.stack([cache[model.arch.hook_mlp_out(i)][0, start:].float().mean(0) for i in range(n)])
    return resid.cpu(), mlp.cpu()


def locate_toxic(model: Model, item: SafetyItem, *, distance: str = "l2", context: str = "none") -> ToxicRegion:
    """Locate ``item``'s toxic layer: argmax over layers of the safe-vs-unsafe hidden-state distance."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if not isinstance(item, SafetyItem):
        raise ValueError(f"locate_toxic needs a SafetyItem, got {type(item).__name__}")
    safe_r, safe_m = pooled_states(model, *response_ids(model, item, item.safe_generation, context))
    bad_r, bad_m = pooled_states(model, *response_ids(model, item, item.unsafe_generation, context))
    l2 = (safe_r - bad_r).norm(dim=-1)
    relative = l2 / (0.5 * (safe_r.norm(dim=-1) + bad_r.norm(dim=-1))).clamp_min(1e-12)
    mlp_shift = (safe_m - bad_m).norm(dim=-1)
    profile = l2 if distance == "l2" else relative
    return ToxicRegion(item_id=item.id, layer=int(profile.argmax()), distance=distance, context=context, l2=l2,
                       relative=relative, mlp_shift=mlp_shift, model_name=model.name, fingerprint=model.fingerprint,
                       meta={"category": item.category})


register(KIND, ToxicRegion.load, lambda m: f"toxic layer {m.get('layer')} ({m.get('distance', 'l2')} distance)")
