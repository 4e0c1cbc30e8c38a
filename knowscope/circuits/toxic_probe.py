"""A toxic-region locator over a whole dataset: where do safe and unsafe responses separate, held out?

:func:`~knowscope.circuits.toxic.locate_toxic` compares one item's safe and unsafe response; its l2
distance grows with the residual norm, so it picks the last layer for every item, and between two
unsafe responses (same label) it is nearly as large. This locator asks a question a control can fail:

1. every item's safe and unsafe response is run through the model (after the adversarial prompt in
   the chat template by default, i.e. the states DINM tunes) and each layer's residual after the
   block is mean-pooled over the response tokens;
2. per layer, a linear probe is fitted on the items of all folds but one and scored on the held-out
   items (folds split by item, so a response's twin never trains the probe that scores it). The
   probe is the class-mean difference on features standardised per dimension with the training
   fold's statistics (a diagonal LDA): scale-free, so the growth of the residual norm with depth
   cannot enter, and with no fitting loop it is deterministic;
3. the per-layer score is the held-out separation d' (difference of the two classes' mean
   projections over their pooled standard deviation); held-out accuracy is reported beside it. The
   toxic layer is the argmax of d'.

Two controls run the same pipeline on labels that carry no toxicity and must fail (d' near 0):
``"shuffled"`` (the safe/unsafe labels permuted across all responses, seeded) and ``"same_label"``
(only the unsafe responses, split into two arbitrary halves by item). A layer is only evidence of a
toxic region where its d' is well above both controls' at every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.circuits.toxic import CONTEXTS, response_ids
from knowscope.models import Model
from knowscope.results import load_dir, register, save_dir
from knowscope.safeedit import SafetyItem

KIND = "toxic_location"
CONTROLS = ("shuffled", "same_label")
MIN_ITEMS = 4


@dataclass
class ToxicLocation:
    """Per layer, how well safe and unsafe responses separate on held-out items, and two controls.

    ``score`` / ``accuracy``: held-out d' and accuracy of the safe-vs-unsafe probe; ``controls``
    maps each control's name to its held-out d' per layer. ``layer`` is the argmax of ``score``.
    """

    layer: int
    score: Float[Tensor, " n_layers"]
    accuracy: Float[Tensor, " n_layers"]
    controls: dict[str, Float[Tensor, " n_layers"]]
    context: str = "prompt"
    n_items: int = 0
    folds: int = 5
    seed: int = 0
    model_name: str = ""
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def control_layers(self) -> dict[str, int]:
        """Each control's own argmax layer (what the locator would say on labels without toxicity)."""
        return {k: int(v.argmax()) for k, v in self.controls.items()}

    @property
    def margin(self) -> Float[Tensor, " n_layers"]:
        """Per layer, d' minus the largest control d' at that layer."""
        return self.score - torch.stack(list(self.controls.values())).max(0).values

    def ranking(self, k: int = 5) -> list[int]:
        """The ``k`` layers with the largest held-out d', best first."""
        return [int(i) for i in self.score.argsort(descending=True)[:k]]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "context": self.context, "n_items": self.n_items, "folds": self.folds,
                "seed": self.seed, "model_name": self.model_name, "fingerprint": self.fingerprint, "meta": self.meta,
                "ranking": self.ranking(), "control_layers": self.control_layers,
                "score": [round(float(x), 4) for x in self.score],
                "accuracy": [round(float(x), 4) for x in self.accuracy],
                "controls": {k: [round(float(x), 4) for x in v] for k, v in self.controls.items()}}

    def save(self, path: str | Path) -> Path:
        meta = {k: self.to_dict()[k] for k in ("layer", "context", "n_items", "folds", "seed", "model_name",
                                                "fingerprint", "meta")}
        arrays = {"score": self.score, "accuracy": self.accuracy,
                  **{f"control_{k}": v for k, v in self.controls.items()}}
        return save_dir(path, KIND, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> ToxicLocation:
        meta, arrays = load_dir(path, KIND)
        controls = {k[len("control_"):]: v for k, v in arrays.items() if k.startswith("control_")}
        return cls(layer=meta["layer"], score=arrays["score"], accuracy=arrays["accuracy"], controls=controls,
                   context=meta["context"], n_items=meta["n_items"], folds=meta["folds"], seed=meta["seed"],
                   model_name=meta.get("model_name", ""), fingerprint=meta.get("fingerprint", ""),
                   meta=meta.get("meta", {}))

    def figure(self) -> Any:
        """Held-out d' per layer beside the controls', the toxic layer marked."""
        import plotly.graph_objects as go

        layers = list(range(len(self.score)))
        traces = [go.Scatter(x=layers, y=self.score.tolist(), mode="lines+markers", name="safe vs unsafe")]
        traces += [go.Scatter(x=layers, y=v.tolist(), mode="lines", name=f"control: {k}", line={"dash": "dot"})
                   for k, v in self.controls.items()]
        fig = go.Figure(traces)
        fig.add_vline(x=self.layer, line_dash="dash", annotation_text=f"toxic layer {self.layer}")
        fig.update_layout(title=f"Held-out separation of safe and unsafe responses ({self.n_items} items)",
                          xaxis_title="layer", yaxis_title="held-out d'", template="plotly_white")
        return fig


@torch.no_grad()
def response_states(model: Model, items: Sequence[SafetyItem], context: str = "prompt",
                    batch_size: int = 16) -> Float[Tensor, "item 2 n_layers d_model"]:
    """Per item, the pooled residual after each block of its safe (index 0) and unsafe (1) response.

    Sequences run in batches, right-padded: in a causal model a pad after a sequence cannot reach its
    positions, so each row's states equal those of :func:`~knowscope.circuits.toxic.pooled_states` run
    alone (a unit test checks it), at a fraction of the per-pass overhead.
    """
    rows = [response_ids(model, it, text, context) for it in items
            for text in (it.safe_generation, it.unsafe_generation)]
    n = model.arch.n_layers
    names = [model.arch.hook_resid_post(i) for i in range(n)]
    wanted = set(names)
    pooled = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        tokens = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
        for r, (ids, _) in enumerate(chunk):
            tokens[r, : len(ids)] = torch.tensor(ids)
        _, cache = model.bridge.run_with_cache(tokens.to(model.device), names_filter=lambda name: name in wanted)
        stacked = torch.stack([cache[name] for name in names], dim=1).float()  # [batch, layer, pos, d]
        for r, (ids, start) in enumerate(chunk):
            pooled.append(stacked[r, :, start : len(ids)].mean(1).cpu())
    return torch.stack(pooled).reshape(len(items), 2, n, -1)


def heldout_separation(x: Float[Tensor, "n n_layers d"], y: Int[Tensor, " n"], groups: Int[Tensor, " n"],
                       folds: int) -> tuple[Float[Tensor, " n_layers"], Float[Tensor, " n_layers"]]:
    """Per layer, held-out d' and accuracy of a class-mean-difference probe on standardised features.

    Folds are over ``groups`` (``group % folds``); every sample is scored once, by the probe fitted
    without its group. d' is taken over all held-out projections together (each fold's direction is
    unit-norm in the standardised space, so the folds' projections share one scale).
    """
    proj = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    xf = x.double()
    for f in range(folds):
        test = groups % folds == f
        train = ~test
        if not test.any():
            continue
        xtr, ytr = xf[train], y[train]
        if ytr.min() == ytr.max():
            raise ValueError("a training fold holds one label only: give more items")
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
        z = (xtr - mean) / std
        w = z[ytr == 1].mean(0) - z[ytr == 0].mean(0)  # [n_layers, d]
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        mid = 0.5 * (z[ytr == 1].mean(0) + z[ytr == 0].mean(0))
        proj[test] = (((xf[test] - mean) / std - mid) * w).sum(-1)
    pos, neg = proj[y == 1], proj[y == 0]
    pooled = (0.5 * (pos.var(0) + neg.var(0))).sqrt().clamp_min(1e-12)
    dprime = (pos.mean(0) - neg.mean(0)) / pooled
    accuracy = ((proj > 0).long() == y[:, None]).double().mean(0)
    return dprime.float(), accuracy.float()


def separation_profiles(states: Float[Tensor, "item 2 n_layers d_model"], folds: int = 5,
                        seed: int = 0) -> tuple[Float[Tensor, " n_layers"], Float[Tensor, " n_layers"],
                                                dict[str, Float[Tensor, " n_layers"]]]:
    """d' and accuracy of safe vs unsafe, and each control's d' (see the module docstring)."""
    n_items = states.shape[0]
    if n_items < max(MIN_ITEMS, folds):
        raise ValueError(f"the contrastive locator needs at least {max(MIN_ITEMS, folds)} items, got {n_items}")
    x = states.reshape(2 * n_items, *states.shape[2:])
    y = torch.tensor([0, 1] * n_items)
    groups = torch.arange(n_items).repeat_interleave(2)
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))
    groups = order[groups]  # a seeded assignment of items to folds
    score, accuracy = heldout_separation(x, y, groups, folds)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))]
    unsafe = states[:, 1]
    halves = (order % 2).long()  # two arbitrary halves of the unsafe responses
    controls = {
        "shuffled": heldout_separation(x, shuffled, groups, folds)[0],
        "same_label": heldout_separation(unsafe, halves, order // 2, folds)[0],
    }
    return score, accuracy, controls


def locate_toxic_layers(model: Model, items: Sequence[SafetyItem], *, context: str = "prompt", folds: int = 5,
                        seed: int = 0) -> ToxicLocation:
    """The layer where safe and unsafe responses separate most on held-out items, with two controls."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    items = list(items)
    bad = [type(it).__name__ for it in items if not isinstance(it, SafetyItem)]
    if bad:
        raise ValueError(f"locate_toxic_layers needs SafetyItems, got {bad[0]}")
    states = response_states(model, items, context) if len(items) >= max(MIN_ITEMS, folds) else None
    if states is None:
        raise ValueError(f"the contrastive locator needs at least {max(MIN_ITEMS, folds)} items, got {len(items)}")
    score, accuracy, controls = separation_profiles(states, folds, seed)
    return ToxicLocation(layer=int(score.argmax()), score=score, accuracy=accuracy, controls=controls,
                         context=context, n_items=len(items), folds=folds, seed=seed, model_name=model.name,
                         fingerprint=model.fingerprint)


register(KIND, ToxicLocation.load,
         lambda m: f"toxic layer {m.get('layer')} (held-out probe over {m.get('n_items')} items)")
