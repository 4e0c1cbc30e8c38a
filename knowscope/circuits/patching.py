"""Generic activation patching: copy activations of a *source* run into a *target* run and read a metric.

This is the primitive that causal tracing and knowledge circuits build on. A patch names a hook
point in TransformerLens's vocabulary (``blocks.3.hook_resid_pre``, ``blocks.5.hook_mlp_out``,
``blocks.2.attn.hook_z``, ...) and the token positions to overwrite; everything else in the target
run is left alone. Source and target prompts must have the same token length (BOS included), so
that a position means the same slot in both runs.

* :func:`cache_activations` - one run, returning the activations at the named hooks;
* :func:`run_with_patches` - one target run (any batch) with explicit patched values, returning
  the metric per batch row;
* :func:`activation_patching` - the usual sweep: for every hook name (and every position, or all
  positions at once), patch the source activation into the target run and read the metric. All
  the patched runs of a sweep are batched into as few forward passes as the row budget allows.

Metrics are callables ``metric(logits) -> Tensor[batch]`` on the full logits ``[batch pos vocab]``;
:func:`prob_metric`, :func:`logit_metric` and :func:`logit_diff_metric` build the usual ones (at the
last position).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from knowscope.models import Model

logger = logging.getLogger(__name__)

Metric = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# metrics


def prob_metric(token_id: int, position: int = -1) -> Metric:
    """Probability of ``token_id`` at ``position`` (default: the last token), per batch row."""

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        return torch.softmax(logits[:, position].float(), dim=-1)[:, token_id]

    return metric


def logit_metric(token_id: int, position: int = -1) -> Metric:
    """Logit of ``token_id`` at ``position``, per batch row."""

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        return logits[:, position, token_id].float()

    return metric


def logit_diff_metric(good_id: int, bad_id: int, position: int = -1) -> Metric:
    """``logit[good] - logit[bad]`` at ``position``, per batch row (the IOI-style metric)."""

    def metric(logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        return (logits[:, position, good_id] - logits[:, position, bad_id]).float()

    return metric


# --------------------------------------------------------------------------------------------
# helpers


def check_hook_names(model: Model, names: Sequence[str]) -> list[str]:
    """Raise a clear ValueError for hook names the bridge does not have."""
    known = model.bridge.hook_dict
    bad = [n for n in names if n not in known]
    if bad:
        examples = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out", "blocks.0.hook_attn_out",
                    "blocks.0.attn.hook_z", "blocks.0.mlp.hook_post"]
        raise ValueError(f"unknown hook point(s) {bad}; valid names look like {examples} (layers 0.."
                         f"{model.arch.n_layers - 1})")
    return list(names)


def as_tokens(model: Model, prompt: str | Tensor) -> Int[Tensor, "batch pos"]:
    """A prompt (BOS prepended) or a token tensor, as a ``[batch, pos]`` tensor on the model's device."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt is empty")
        return model.to_tokens(prompt).to(model.device)
    toks = prompt if prompt.ndim == 2 else prompt.unsqueeze(0)
    return toks.to(model.device)


def check_same_length(source: Tensor, target: Tensor) -> None:
    """Source and target runs must align position by position."""
    if source.shape[-1] != target.shape[-1]:
        raise ValueError(
            f"source and target prompts have different token lengths ({source.shape[-1]} vs {target.shape[-1]} "
            "tokens, BOS included); activation patching needs equal lengths - rephrase one of them"
        )


def _check_positions(positions: Sequence[int], n_pos: int) -> list[int]:
    out = []
    for p in positions:
        q = int(p)
        if not -n_pos <= q < n_pos:
            raise ValueError(f"position {p} is out of range for a prompt of {n_pos} tokens (valid: 0..{n_pos - 1})")
        out.append(q % n_pos)
    return out


@torch.no_grad()
def cache_activations(model: Model, tokens: Int[Tensor, "batch pos"], names: Sequence[str],
                      fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> tuple[Tensor, dict[str, Tensor]]:
    """Run once and return ``(logits, {hook name: activation})`` for the named hooks.

    ``fwd_hooks`` are applied during the run (e.g. an embedding-noise hook); the activations are
    read after them, so a cache of a corrupted run holds corrupted values.
    """
    check_hook_names(model, names)
    store: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any) -> None:
        store[hook.name] = act.detach().clone()

    hooks = list(fwd_hooks) + [(n, save) for n in names]
    logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    # aliases (blocks.L.hook_mlp_out -> blocks.L.mlp.hook_out) report the canonical name: map back
    canon = {n: model.bridge.hook_dict[n].name for n in names}
    return logits, {n: store[canon[n]] for n in names}


def _patch_hook(rows: Tensor, positions: Tensor, values: Tensor) -> Callable:
    """A hook writing ``values[i]`` into ``act[rows[i], positions[i]]``."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[rows, positions] = values.to(act.dtype)
        return act

    return hook


@torch.no_grad()
def run_with_patches(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    patches: Sequence[tuple[str, Sequence[int], Sequence[int], Tensor]],
    metric: Metric,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
) -> Float[Tensor, " batch"]:
    """One run of ``tokens`` with explicit patches; returns ``metric(logits)`` per batch row.

    Each patch is ``(hook_name, rows, positions, values)``: ``act[rows[i], positions[i]] = values[i]``
    (``values`` is ``[n, ...]`` matching the activation's trailing shape, e.g. ``[n, d_model]`` or
    ``[n, n_heads, d_head]`` for ``hook_z``). Extra ``fwd_hooks`` run before the patches.
    """
    check_hook_names(model, [p[0] for p in patches])
    hooks = list(fwd_hooks)
    dev = tokens.device
    for name, rows, positions, values in patches:
        r = torch.as_tensor(list(rows), device=dev, dtype=torch.long)
        p = torch.as_tensor(list(positions), device=dev, dtype=torch.long)
        if r.numel() != p.numel() or r.numel() != values.shape[0]:
            raise ValueError(f"patch at {name}: rows ({r.numel()}), positions ({p.numel()}) and values "
                             f"({values.shape[0]}) must have the same length")
        hooks.append((name, _patch_hook(r, p, values.to(dev))))
    logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return metric(logits)


@dataclass
class PatchingResult:
    """Metric of the target run with each (hook, position) patched from the source run.

    ``effects`` is ``[len(hook_names), len(positions)]`` (one column, position ``"all"``, when every
    position was patched at once); ``source_metric`` / ``target_metric`` are the unpatched runs.
    """

    hook_names: list[str]
    positions: list[int] | None
    effects: Float[Tensor, "hooks positions"]
    source_metric: float
    target_metric: float
    tokens: list[str] = field(default_factory=list)

    def normalized(self) -> Float[Tensor, "hooks positions"]:
        """``(effect - target) / (source - target)``: 0 = nothing restored, 1 = the source's metric."""
        denom = self.source_metric - self.target_metric
        if abs(denom) < 1e-12:
            raise ValueError("source and target metrics are equal; the normalized effect is undefined")
        return (self.effects - self.target_metric) / denom

    def to_dict(self) -> dict[str, Any]:
        return {"hook_names": self.hook_names, "positions": self.positions, "effects": self.effects.tolist(),
                "source_metric": self.source_metric, "target_metric": self.target_metric, "tokens": self.tokens}

    def figure(self) -> Any:
        """A plotly heatmap, hooks x positions (not shown)."""
        import plotly.graph_objects as go

        x = [f"{i}:{t}" for i, t in enumerate(self.tokens)] if self.positions is not None else ["all"]
        if self.positions is not None:
            x = [x[p] for p in self.positions]
        fig = go.Figure(go.Heatmap(z=self.effects.tolist(), x=x, y=self.hook_names, colorscale="Purples"))
        fig.update_layout(title="activation patching: metric of the patched target run", yaxis_autorange="reversed")
        return fig


@torch.no_grad()
def activation_patching(
    model: Model,
    source: str | Tensor,
    target: str | Tensor,
    hook_names: Sequence[str],
    positions: Sequence[int] | str = "each",
    metric: Metric | None = None,
    max_rows: int = 64,
) -> PatchingResult:
    """Patch each hook point (at each position, or at all positions at once) from source into target.

    Args:
        source: the run the activations come from (a prompt, BOS prepended, or tokens ``[1, pos]``).
        target: the run they are written into; same token length as ``source``.
        hook_names: hook points to patch, one at a time.
        positions: ``"each"`` (every position separately), ``"all"`` (all positions together), or a list
            of positions to patch separately.
        metric: ``metric(logits) -> [batch]``; default: probability of the source run's top-1 next token.
        max_rows: patched runs per forward pass.
    """
    src, tgt = as_tokens(model, source), as_tokens(model, target)
    if src.shape[0] != 1 or tgt.shape[0] != 1:
        raise ValueError("activation_patching takes one source and one target prompt")
    check_same_length(src, tgt)
    names = check_hook_names(model, list(hook_names))
    if not names:
        raise ValueError("hook_names is empty: name at least one hook point, e.g. 'blocks.0.hook_resid_pre'")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    n_pos = src.shape[1]
    src_logits, acts = cache_activations(model, src, names)
    if metric is None:
        metric = prob_metric(int(src_logits[0, -1].argmax()))
    tgt_logits = model.bridge(tgt)
    source_metric, target_metric = float(metric(src_logits)[0]), float(metric(tgt_logits)[0])

    if isinstance(positions, str):
        if positions not in ("each", "all"):
            raise ValueError(f"positions must be 'each', 'all' or a list of ints, got {positions!r}")
        pos_list: list[int] | None = list(range(n_pos)) if positions == "each" else None
    else:
        pos_list = _check_positions(positions, n_pos)
        if not pos_list:
            raise ValueError("positions is empty")
    # one patched run per (hook, position) cell; all positions of a hook at once when pos_list is None
    cells = [(h, p) for h in names for p in (pos_list if pos_list is not None else [None])]
    values: list[Tensor] = []
    for start in range(0, len(cells), max_rows):
        chunk = cells[start : start + max_rows]
        patches = []
        for name in names:
            rows, poss, vals = [], [], []
            for i, (h, p) in enumerate(chunk):
                if h != name:
                    continue
                ps = range(n_pos) if p is None else [p]
                for q in ps:
                    rows.append(i)
                    poss.append(q)
                    vals.append(acts[name][0, q])
            if rows:
                patches.append((name, rows, poss, torch.stack(vals)))
        batch = tgt.expand(len(chunk), -1)
        values.append(run_with_patches(model, batch, patches, metric).float().cpu())
    effects = torch.cat(values).reshape(len(names), -1)
    return PatchingResult(hook_names=names, positions=pos_list, effects=effects, source_metric=source_metric,
                          target_metric=target_metric, tokens=model.to_str_tokens(tgt[0]))
