"""The tracer: the three ways to fill a trace's table (reference loop, fast partial passes, attribution)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope import hooks as hk
from knowscope.circuits.tracing import partial
from knowscope.circuits.tracing.inputs import SEVERED_KINDS, _hook_for, window_layers
from knowscope.circuits.tracing.partial import _OutputPatch, _PrefixKV, _Record
from knowscope.models import Model
from knowscope.progress import progress_bar

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    """One cell of the fast path: start the pass at ``start`` (a restored input if ``restore``), and
    overwrite ``patches[layer] = (kind, values)`` at token t in the listed layers."""

    index: tuple[str, int, int]  # (kind, token, layer) of the output table
    start: int
    restore: bool
    patches: dict[int, tuple[str, Tensor]]


# --------------------------------------------------------------------------------------------
# the tracer


class _Tracer:
    """Shared state of one trace: tokens, subject range, the fixed noise draws, target id."""

    def __init__(self, model: Model, tokens: Tensor, s0: int, s1: int, noise: Tensor, window: int,
                 max_rows: int) -> None:
        self.model, self.tokens, self.s0, self.s1 = model, tokens, s0, s1
        self.noise = noise  # [samples, s1 - s0, d_model]
        self.samples = noise.shape[0]
        self.window = window
        self.max_rows = max_rows
        self.n_layers = model.arch.n_layers
        self.n_tokens = tokens.shape[1]
        self.passes = 0
        self.target_id = -1

    # --- shared pieces -------------------------------------------------------------------------
    def noise_hook(self, requires_grad: bool = False, repeat: int = 1) -> Callable:
        """Adds the trace's noise draws to the subject's embeddings; ``repeat`` stacks the
        ``samples`` rows that many times (one group of rows per window end in attribution)."""
        s0, s1 = self.s0, self.s1
        noise = self.noise.repeat(repeat, 1, 1) if repeat > 1 else self.noise

        def hook(x: Tensor, hook: Any) -> Tensor:
            if requires_grad:  # a leaf, so that gradients reach every later activation
                x = x.detach().requires_grad_(True)
            full = torch.zeros_like(x, requires_grad=False)
            full[:, s0:s1] = noise.to(x.dtype)
            return x + full

        return hook

    def corrupted_tokens(self) -> Tensor:
        return self.tokens.expand(self.samples, -1)

    def probs(self, logits_last: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        return torch.softmax(logits_last.float(), dim=-1)[:, self.target_id]

    # --- reference: one bridge forward pass per cell ---------------------------------------------
    @torch.no_grad()
    def reference(self, kinds: Sequence[str], clean: dict[str, Tensor], corrupt: dict[str, Tensor],
                  positions: Sequence[int], progress: bool) -> dict[str, Tensor]:
        out = {k: torch.full((self.n_tokens, self.n_layers), math.nan) for k in kinds}
        cells = [(k, t, L) for k in kinds for t in positions for L in range(self.n_layers)]
        toks = self.corrupted_tokens()
        for kind, t, L in progress_bar(cells, desc="trace (reference)", disable=not progress):
            hooks = [(hk.EMBED, self.noise_hook())]
            if kind in ("hidden",) + SEVERED_KINDS:
                name = _hook_for("hidden", L)
                hooks.append((name, _set_position(t, clean[name][0, t])))
            if kind in ("mlp", "attn"):
                for layer in window_layers(L, self.window, self.n_layers):
                    name = _hook_for(kind, layer)
                    hooks.append((name, _set_position(t, clean[name][0, t])))
            if kind in SEVERED_KINDS:  # ROME freezes the module at token t in every layer
                for layer in range(self.n_layers):
                    name = _hook_for(kind, layer)
                    hooks.append((name, _set_position(t, corrupt[name][:, t])))
            logits = self.model.bridge.run_with_hooks(toks, fwd_hooks=hooks)
            self.passes += 1
            out[kind][t, L] = self.probs(logits[:, -1]).mean().item()
        return out

    # --- fast: partial forward passes from the first restored layer and token ------------------
    @torch.no_grad()
    def fast(self, kinds: Sequence[str], clean: _Record, corrupt: _Record, low: float,
             positions: Sequence[int], progress: bool, mode: str = "suffix") -> dict[str, Tensor]:
        n, S = self.n_layers, self.samples
        out = {k: torch.full((self.n_tokens, n), math.nan) for k in kinds}
        for k in kinds:  # before the subject clean == corrupted: restoring there changes nothing
            out[k][[t for t in positions if t < self.s0]] = low
        tokens = [t for t in positions if t >= self.s0]
        for t in progress_bar(tokens, desc="trace (fast)", disable=not progress):
            jobs: list[_Job] = []
            for kind in kinds:
                for L in range(n):
                    if kind == "hidden":
                        jobs.append(_Job((kind, t, L), L + 1, True, {}))
                    elif kind in ("mlp", "attn"):
                        layers = window_layers(L, self.window, n)
                        src = clean.mlp if kind == "mlp" else clean.attn
                        jobs.append(_Job((kind, t, L), layers.start, False,
                                         {la: (kind, src[la][0, t].unsqueeze(0)) for la in layers}))
                    else:
                        mod = "mlp" if kind == "hidden_frozen_mlp" else "attn"
                        src = corrupt.mlp if mod == "mlp" else corrupt.attn
                        jobs.append(_Job((kind, t, L), L + 1, True,
                                         {la: (mod, src[la][:, t]) for la in range(L + 1, n)}))
            jobs.sort(key=lambda j: j.start)
            per_chunk = max(1, self.max_rows // S)
            for c in range(0, len(jobs), per_chunk):
                chunk = jobs[c : c + per_chunk]
                scores = self._run_chunk(t, chunk, clean, corrupt, mode)
                for job, score in zip(chunk, scores.tolist(), strict=True):
                    kind, tt, L = job.index
                    out[kind][tt, L] = score
        return out

    def _run_chunk(self, t: int, chunk: list[_Job], clean: _Record, corrupt: _Record, mode: str) -> Tensor:
        """One batched partial pass of the jobs of token t; ``mode`` as :func:`_fast_mode`."""
        n, S, dev = self.n_layers, self.samples, self.tokens.device
        hd = self.model.bridge.hook_dict
        suffix = mode == "suffix"
        first = t if suffix else 0  # first position the rows hold
        at = t - first  # index of token t in a row
        h: Tensor | None = None
        active = 0
        self.passes += 1
        for layer in range(chunk[0].start, n + 1):
            new = [j for j in chunk[active:] if j.start == layer]
            if new:
                init = corrupt.resid[layer][:, first:].unsqueeze(0).repeat(len(new), 1, 1, 1)  # [jobs, S, pos, d]
                for i, job in enumerate(new):
                    if job.restore:
                        init[i, :, at] = clean.resid[layer][0, t]
                init = init.reshape(len(new) * S, *init.shape[2:])
                h = init if h is None else torch.cat([h, init])
                active += len(new)
            if layer == n or h is None:
                continue
            handles = []
            for mod in ("mlp", "attn"):
                rows, vals = [], []
                for i, job in enumerate(chunk[:active]):
                    p = job.patches.get(layer)
                    if p is not None and p[0] == mod:
                        rows.append(torch.arange(i * S, (i + 1) * S, device=dev))
                        vals.append(p[1].expand(S, -1))
                if rows:
                    hook = _OutputPatch(torch.cat(rows), torch.cat(vals), at)
                    handles.append(hd[hk.out(mod, layer)].register_forward_hook(hook))
            cache = None
            if suffix:
                k, v = corrupt.kv[layer]
                cache = _PrefixKV(k[:, :, :t].repeat(active, 1, 1, 1), v[:, :, :t].repeat(active, 1, 1, 1)) if t \
                    else _PrefixKV()
            try:
                h = partial._block(self.model, layer, h, first, cache)
            finally:
                for handle in handles:
                    handle.remove()
        assert h is not None and active == len(chunk)
        logits = self.model.bridge.unembed(self.model.bridge.ln_final(h[:, -1:]))[:, 0]
        return self.probs(logits).reshape(len(chunk), S).mean(1).cpu()

    # --- attribution patching --------------------------------------------------------------------
    def attribution(self, kinds: Sequence[str], clean: dict[str, Tensor], low: float,
                    positions: Sequence[int] | None = None) -> dict[str, Tensor]:
        """First-order estimate of every cell: ``low + sum over restored sites of (clean - corrupt) . grad``.

        For one restored site (``hidden``; ``mlp``/``attn`` with ``window == 1``) the gradient is the
        plain one of the corrupted run, so one backward pass serves every cell. A window restores
        several sites of token t at once, and a later window site then no longer depends on an
        earlier one: the first-order term needs, for each site, the gradient with the window's
        *other* sites at token t held fixed (paths through them do not count).
        :meth:`_windowed_gradients` computes those exactly; it costs one batched backward pass per
        token, with one row group per distinct window end.
        """
        n = self.n_layers
        names = {m: [_hook_for(m, L) for L in range(n)] for m in kinds}
        flat = [nm for m in kinds for nm in names[m]]
        acts: dict[str, Tensor] = {}
        canon = {self.model.bridge.hook_dict[nm].name: nm for nm in flat}

        def keep(act: Tensor, hook: Any) -> None:
            act.retain_grad()
            acts[canon[hook.name]] = act

        with torch.enable_grad():
            hooks = [(hk.EMBED, self.noise_hook(requires_grad=True))] + [(nm, keep) for nm in flat]
            logits = self.model.bridge.run_with_hooks(self.corrupted_tokens(), fwd_hooks=hooks)
            metric = self.probs(logits[:, -1]).mean()
            metric.backward()
        self.passes += 2
        corrupt = {nm: acts[nm].detach() for nm in flat}
        # first-order effect of restoring each (token, layer) site alone: sum over samples of diff . grad
        delta = {nm: ((clean[nm][0].unsqueeze(0) - corrupt[nm]) * acts[nm].grad).sum(dim=(0, 2)).cpu()
                 for nm in flat}
        out = {}
        traced = list(range(self.n_tokens)) if positions is None else list(positions)
        for kind in kinds:
            if kind in ("mlp", "attn") and self.window > 1:
                table = self._windowed_table(kind, clean, corrupt, traced)
            else:
                table = torch.stack([delta[nm] for nm in names[kind]], dim=1)  # [pos, layer]
            out[kind] = low + table
        return out

    def _windowed_table(self, kind: str, clean: dict[str, Tensor], corrupt: dict[str, Tensor],
                        positions: Sequence[int]) -> Float[Tensor, "pos layer"]:
        """The windowed first-order term of ``kind`` for every (token, centre layer) cell."""
        n = self.n_layers
        windows = [window_layers(L, self.window, n) for L in range(n)]
        ends = sorted({w.stop for w in windows})
        table = torch.zeros(self.n_tokens, n)
        for t in positions:
            if t < self.s0:  # before the subject the clean and corrupted runs agree: no effect
                continue
            grads = self._windowed_gradients(kind, t, ends)  # end -> [layer, samples, d]
            for L, w in enumerate(windows):
                g = grads[w.stop]
                total = 0.0
                for layer in w:
                    nm = _hook_for(kind, layer)
                    diff = clean[nm][0, t].unsqueeze(0) - corrupt[nm][:, t]  # [samples, d]
                    total += float((diff * g[layer]).sum())
                table[t, L] = total
        return table

    def _windowed_gradients(self, kind: str, t: int, ends: Sequence[int]) -> dict[int, Tensor]:
        """For each window end ``e``: d mean-P / d site(l, t) for every l < e, with every ``kind`` site
        of token t below ``e`` made an independent input (a leaf), so that a site's gradient counts
        no path through another site of the same window. One row group of ``samples`` rows per end,
        batched (chunked to ``max_rows // 4`` rows: a backward pass keeps every activation)."""
        per = max(1, (self.max_rows // 4) // self.samples)
        out: dict[int, Tensor] = {}
        for c in range(0, len(ends), per):
            out.update(self._leaf_gradients(kind, t, list(ends[c : c + per])))
        return out

    def _leaf_gradients(self, kind: str, t: int, group: list[int]) -> dict[int, Tensor]:
        S, n = self.samples, self.n_layers
        rows_end = torch.tensor(group).repeat_interleave(S)  # the window end of each row
        leaves: dict[int, Tensor] = {}

        def make_leaf(layer: int) -> Callable:
            def hook(act: Tensor, hook: Any) -> Tensor:
                rows = (rows_end > layer).nonzero().flatten().to(act.device)
                if rows.numel() == 0:
                    return act
                leaf = act[rows, t].detach().clone().requires_grad_(True)
                leaves[layer] = leaf
                act = act.clone()
                act[rows, t] = leaf
                return act

            return hook

        hooks = [(hk.EMBED, self.noise_hook(repeat=len(group)))]
        hooks += [(_hook_for(kind, layer), make_leaf(layer)) for layer in range(n)]
        with torch.enable_grad():
            logits = self.model.bridge.run_with_hooks(self.tokens.expand(len(group) * S, -1), fwd_hooks=hooks)
            metric = self.probs(logits[:, -1]).sum() / S  # each row group is one mean over the samples
            layers = sorted(leaves)
            grads = torch.autograd.grad(metric, [leaves[la] for la in layers], allow_unused=True)
        self.passes += 2
        out: dict[int, Tensor] = {}
        for i, end in enumerate(group):
            stack = torch.zeros(n, S, self.model.arch.d_model)
            for la, g in zip(layers, grads, strict=True):
                if la < end and g is not None:
                    rows = (rows_end > la).nonzero().flatten().tolist()
                    first = rows.index(i * S)  # this group's rows among the leaf's rows
                    stack[la] = g[first : first + S].detach().float().cpu()
            out[end] = stack
        return out


def _set_position(t: int, value: Tensor) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, t] = value.to(act.dtype)
        return act

    return hook
