"""Logit lens (and tuned lens): read every layer's residual stream through the model's own final norm and unembedding.

For layer ``L`` and position ``t``, ``logits_L[t] = unembed(final_norm(resid_post_L[t]))``. The final
norm is *computed on that layer's vector* (its RMS / mean and variance), not reused from the last
layer's cached scale, so each layer is read as if the model stopped there. At the last layer this
is exactly the model's output (tested). Results keep the top tokens per layer and position and the
rank and probability of chosen target tokens at the last position, layer by layer.

:func:`lens` reads the same way through a :class:`~knowscope.probes.tuned_lens.TunedLens` when
one is given (``tuned=``): each layer's residual first goes through that layer's translator. The
result type, its figure and :func:`fact_readout` (over a fact file) are the same for both lenses.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.models.tokens import decode_each, pieces_text, visible
from knowscope.results import load_dir, register, save_dir

KIND = "logit_lens"


class Translators(Protocol):
    """What :func:`lens` needs of a tuned lens (:class:`~knowscope.probes.tuned_lens.TunedLens` is one):
    a check that it belongs to ``model``, and every layer's logits read through its translator. Named
    here as a protocol so that this module needs nothing from the module that builds on it."""

    def check_model(self, model: Model) -> None: ...

    def logits(self, model: Model,
               resid: Float[Tensor, "n_layers *rest d_model"]) -> Float[Tensor, "n_layers *rest vocab"]: ...


@torch.no_grad()
def lens_logits(model: Model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """The model's final norm (computed on ``resid`` itself) then its unembedding."""
    x = resid.to(model.device, dtype=next(model.hf.parameters()).dtype)
    return model.bridge.unembed(model.bridge.ln_final(x)).float()


@dataclass
class LogitLensResult:
    """Top tokens per layer and position, and the path of target tokens at the last position."""

    prompt: str
    tokens: list[str]
    top_ids: Int[Tensor, "n_layers n_pos k"]
    top_probs: Float[Tensor, "n_layers n_pos k"]
    top_tokens: list[list[list[str]]]
    targets: list[str] = field(default_factory=list)
    target_ranks: Int[Tensor, "n_targets n_layers"] = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    target_probs: Float[Tensor, "n_targets n_layers"] = field(default_factory=lambda: torch.zeros(0, 0))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.top_ids.shape[0])

    def first_top1_layer(self, target: int = 0) -> int | None:
        """The first layer at which target ``target`` is the top-1 token at the last position."""
        hits = (self.target_ranks[target] == 0).nonzero()
        return int(hits[0]) if len(hits) else None

    def top_by_layer(self, position: int = -1) -> list[dict[str, Any]]:
        """Per layer, the top tokens and their probabilities at ``position``."""
        return [{"layer": layer, "tokens": self.top_tokens[layer][position],
                 "probs": [round(float(p), 4) for p in self.top_probs[layer, position]]}
                for layer in range(self.n_layers)]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tokens": self.tokens, "top_by_layer": self.top_by_layer(),
                "targets": [{"target": t, "rank_by_layer": self.target_ranks[i].tolist(),
                             "prob_by_layer": [round(float(p), 5) for p in self.target_probs[i]],
                             "first_top1_layer": self.first_top1_layer(i)} for i, t in enumerate(self.targets)],
                "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        meta = {"prompt": self.prompt, "tokens": self.tokens, "top_tokens": self.top_tokens, "targets": self.targets,
                "token_text": "decoded", "meta": self.meta}
        return save_dir(path, KIND, meta, {"top_ids": self.top_ids, "top_probs": self.top_probs,
                                           "target_ranks": self.target_ranks, "target_probs": self.target_probs})

    @classmethod
    def load(cls, path: str | Path) -> LogitLensResult:
        meta, a = load_dir(path, KIND)
        # lenses saved before tokens were decoded hold byte-level BPE pieces ("ĠParis"): read them as text
        legacy = meta.get("token_text") != "decoded"
        tokens = pieces_text(meta["tokens"]) if legacy else meta["tokens"]
        top_tokens = pieces_text(meta["top_tokens"]) if legacy else meta["top_tokens"]
        return cls(prompt=meta["prompt"], tokens=tokens, top_ids=a["top_ids"], top_probs=a["top_probs"],
                   top_tokens=top_tokens, targets=meta["targets"], target_ranks=a["target_ranks"],
                   target_probs=a["target_probs"], meta=meta.get("meta", {}))

    def figure(self) -> Any:
        """Layer × token heatmap of the top-1 probability; hover shows the top tokens."""
        import plotly.graph_objects as go

        k = self.top_probs.shape[-1]
        hover = [[" | ".join(f"{visible(t)} {float(self.top_probs[layer, pos, j]):.2f}"
                             for j, t in enumerate(self.top_tokens[layer][pos][:k]))
                  for pos in range(len(self.tokens))] for layer in range(self.n_layers)]
        text = [[visible(self.top_tokens[layer][pos][0]) for pos in range(len(self.tokens))]
                for layer in range(self.n_layers)]
        labels = [f"{i}:{visible(t)}" for i, t in enumerate(self.tokens)]
        fig = go.Figure(go.Heatmap(z=self.top_probs[:, :, 0].tolist(), x=labels,
                                   y=list(range(self.n_layers)), text=text, texttemplate="%{text}",
                                   customdata=hover, hovertemplate="layer %{y}, %{x}<br>%{customdata}<extra></extra>",
                                   colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "top-1 p"}))
        name = "Tuned lens" if self.meta.get("lens") == "tuned" else "Logit lens"
        fig.update_layout(title=f"{name}: {self.prompt!r}", xaxis_title="token", yaxis_title="layer",
                          template="plotly_white", height=max(400, 22 * self.n_layers))
        return fig


@torch.no_grad()
def lens(model: Model, prompt: str, targets: Sequence[str] = (), k: int = 5,
         tuned: Translators | None = None) -> LogitLensResult:
    """Run ``prompt`` (BOS first) and read every layer's residual through the final norm and unembedding.

    ``targets``: continuations (e.g. ``" Paris"``) whose first token's rank and probability at the
    last position are tracked per layer. ``tuned``: a :class:`~knowscope.probes.tuned_lens.TunedLens` for
    this model — each layer is read through its translator first (the tuned lens); ``None`` is the logit lens.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if tuned is not None:
        tuned.check_model(model)
    tokens = model.to_tokens(prompt).to(model.device)
    n = model.arch.n_layers
    names = [model.arch.hook_resid_post(i) for i in range(n)]
    _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    resid = torch.stack([cache[nm][0] for nm in names])  # [n_layers, pos, d_model]
    logits = lens_logits(model, resid) if tuned is None else tuned.logits(model, resid)
    probs = torch.softmax(logits, dim=-1).cpu()
    top_p, top_i = probs.topk(k, dim=-1)
    def decode(ids: list[int]) -> list[str]:
        return decode_each(model.tokenizer, ids)

    top_tokens = [[decode(top_i[layer, pos].tolist()) for pos in range(top_i.shape[1])] for layer in range(n)]
    target_ids = [model.encode_target(t)[0] for t in targets]
    last = probs[:, -1]  # [n_layers, vocab]
    ranks = torch.stack([(last > last[:, [t]]).sum(-1) for t in target_ids]) if target_ids else torch.zeros(0, n)
    tprobs = torch.stack([last[:, t] for t in target_ids]) if target_ids else torch.zeros(0, n)
    return LogitLensResult(prompt=prompt, tokens=decode(tokens[0].tolist()), top_ids=top_i, top_probs=top_p,
                           top_tokens=top_tokens, targets=list(targets), target_ranks=ranks.long(),
                           target_probs=tprobs.float(), meta={"model_name": model.name,
                                                             "fingerprint": model.fingerprint,
                                                             "lens": "logit" if tuned is None else "tuned"})


def logit_lens(model: Model, prompt: str, targets: Sequence[str] = (), k: int = 5) -> LogitLensResult:
    """The logit lens: :func:`lens` without translators."""
    return lens(model, prompt, targets=targets, k=k)


def fact_readout(model: Model, facts: Sequence[Fact], tuned: Translators | None = None) -> dict[str, Any]:
    """Where each fact's true object surfaces under the logit (or tuned) lens, at the last prompt position.

    Per fact, the first layer at which the object's first token is top-1 (and top-5). Returned:
    ``share_top1_before_last`` / ``share_top5_before_last`` — the share of facts whose object is
    top-1 / top-5 at some layer before the last; ``median_first_top1_layer`` — the median first
    top-1 layer over the facts counted in ``share_top1_before_last`` (None if there are none);
    ``first_top1_layers`` / ``first_top5_layers`` per fact (None: never).
    """
    if not facts:
        raise ValueError("no facts to read")
    n = model.arch.n_layers
    first1: list[int | None] = []
    first5: list[int | None] = []
    for f in facts:
        res = lens(model, f.text, targets=[f.true_continuation], k=1, tuned=tuned)
        ranks = res.target_ranks[0]
        first1.append(res.first_top1_layer(0))
        hits5 = (ranks < 5).nonzero()
        first5.append(int(hits5[0]) if len(hits5) else None)
    early1 = [x for x in first1 if x is not None and x < n - 1]
    early5 = [x for x in first5 if x is not None and x < n - 1]
    return {"lens": "logit" if tuned is None else "tuned", "n_facts": len(facts), "n_layers": n,
            "share_top1_before_last": len(early1) / len(facts), "share_top5_before_last": len(early5) / len(facts),
            "median_first_top1_layer": float(statistics.median(early1)) if early1 else None,
            "median_first_top5_layer": float(statistics.median(early5)) if early5 else None,
            "first_top1_layers": first1, "first_top5_layers": first5}


register(KIND, LogitLensResult.load,
         lambda m: f"{m.get('prompt')!r}" + (f", targets {m.get('targets')}" if m.get("targets") else ""))
