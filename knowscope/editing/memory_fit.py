"""Fitting a memory edit (GRACE, WISE): teacher-forced rows, the blocks from the memory's layer up on a
recorded block input with a training hook on the value projection, and the generic texts a memory
must not route all of."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from knowscope import hooks as hk
from knowscope.editing.keys import context_templates
from knowscope.editing.memory import SideMemory, value_inputs
from knowscope.editing.vpaths import selected_logits_fn
from knowscope.models import Model
from knowscope.models.blocks import additive_mask, final_logits, run_block
from knowscope.models.plain import PlainBlocks, PlainUnavailable


def one_layer(layers: Any, default: int, method: str, model: Model) -> int:
    """The one layer a memory editor writes: ``layers`` (``None``: ``default``, an int, or a one-element
    list), checked against the model's depth."""
    if layers is None:
        layer = default
    elif isinstance(layers, int):
        layer = layers
    elif isinstance(layers, (list, tuple)) and len(layers) == 1 and isinstance(layers[0], int):
        layer = int(layers[0])
    else:
        raise ValueError(f"{method} keeps its memory at one layer; give one layer index, not {layers!r} "
                         f"(default {default})")
    if not 0 <= layer < model.arch.n_layers:
        raise ValueError(f"layer {layer} is out of range: {model.name} has layers 0..{model.arch.n_layers - 1}")
    return layer


@dataclass
class TargetRows:
    """``(prompt, target)`` pairs as right-padded teacher-forced rows: ``tokens`` holds BOS + prompt +
    target[:-1]; ``last_prompt[i]`` is row i's last prompt position (it predicts the first target token);
    ``targets[i]`` its target ids. Right padding is exact here: logits are read only at real positions."""

    tokens: Tensor
    last_prompt: list[int]
    targets: list[list[int]]

    @classmethod
    def build(cls, model: Model, pairs: Sequence[tuple[str, str]]) -> TargetRows:
        ids, last, targets = [], [], []
        for prompt, target in pairs:
            p = [int(t) for t in model.to_tokens(prompt)[0]]
            t = model.encode_target(target)
            ids.append(p + t[:-1])
            last.append(len(p) - 1)
            targets.append(t)
        width = max(len(x) for x in ids)
        tokens = torch.full((len(ids), width), model.pad_token_id, dtype=torch.long)
        for i, x in enumerate(ids):
            tokens[i, : len(x)] = torch.tensor(x)
        return cls(tokens.to(model.device), last, targets)

    def read_positions(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(row, position, target id)`` of every target token: token j is predicted at last_prompt + j."""
        rows, pos, tgt = [], [], []
        for i, (start, t) in enumerate(zip(self.last_prompt, self.targets, strict=True)):
            rows.extend([i] * len(t))
            pos.extend(range(start, start + len(t)))
            tgt.extend(t)
        dev = self.tokens.device
        return torch.tensor(rows, device=dev), torch.tensor(pos, device=dev), torch.tensor(tgt, device=dev)


@contextlib.contextmanager
def output_hook(module: nn.Module, fn: Any) -> Iterator[None]:
    """``fn(a, out) -> out`` on the value projection for the duration (``a`` its input, ``out`` its output)."""
    seen: dict[str, Tensor] = {}
    h_in = module.hook_in.register_forward_hook(lambda m, args, out: seen.__setitem__("a", out))
    h_out = module.hook_out.register_forward_hook(lambda m, args, out: fn(seen.pop("a"), out))
    try:
        yield
    finally:
        h_in.remove()
        h_out.remove()


_GENERIC: dict[tuple[str, int], list[Tensor]] = {}


def generic_inputs(model: Model, layer: int) -> list[Tensor]:
    """The value projection's inputs ``[pos, d_mlp]`` on 8 generic texts: ones the model samples itself
    (seeded, cached). A memory that routes some position of every one of them routes everything."""
    key = (model.fingerprint, layer)
    if key not in _GENERIC:
        texts = [t.replace("{}", "").strip() for t in context_templates(model, ((10, 8),), seed=1)[1:]]
        _GENERIC[key] = value_inputs(model, layer, [t for t in texts if t] or ["The"])
    return _GENERIC[key]


def routes_everything(memory: SideMemory, scores: Any) -> tuple[bool, float, float]:
    """Does ``memory`` route some position of every generic text? With ``scores(a) -> (score, threshold)``
    per position, also the weakest text's best ``(score, threshold)`` for the message."""
    best = []
    for a in generic_inputs(memory.model, memory.layer):
        score, threshold = scores(a)
        strength = (score - threshold) if memory.higher_routes else (threshold - score)
        i = int(strength.argmax())
        best.append((float(strength[i]), float(score[i]), float(threshold[i])))
    weakest = min(best)
    return weakest[0] > 0, weakest[1], weakest[2]


def blocks_above(model: Model, layer: int, h_out: Float[Tensor, "batch pos d_model"], rows: Tensor,
                 positions: Tensor) -> Any:
    """A function ``change -> logits at (rows, positions)``: blocks ``layer+1..top`` on ``h_out + change``
    (``h_out`` the residual after block ``layer``, right-padded rows from position 0).

    The blocks run as plain tensor code where :class:`~knowscope.models.plain.PlainBlocks` applies and,
    checked once per model and layer, reproduces the bridge's logits (1e-4 of their scale); else as the
    bridge's blocks. Hooks on those blocks rule plain code out for the call (detach memories first)."""
    def bridge(change: Tensor) -> Tensor:
        h = h_out + change
        for block in range(layer + 1, model.arch.n_layers):
            h = run_block(model, block, h)
        return final_logits(model, h[rows, positions]).float()

    if layer + 1 >= model.arch.n_layers:
        return bridge
    key = (f"memory-above.{layer}", "plain")
    if model.compat.edit_checks.get(key) is False:
        return bridge
    try:
        plain = PlainBlocks(model, layer + 1)
    except PlainUnavailable:  # PlainNotNow among them: hooks in the way for this call only
        return bridge
    n, width = h_out.shape[0], h_out.shape[1]
    pos = torch.arange(width, device=h_out.device).expand(n, -1)
    rotary = plain.rotary(h_out, pos)
    causal = torch.ones(width, width, dtype=torch.bool, device=h_out.device).tril()
    mask = additive_mask(causal.expand(n, -1, -1), h_out.dtype)

    def fast(change: Tensor) -> Tensor:
        h = h_out + change
        for block in range(layer + 1, model.arch.n_layers):
            h = plain.run(block, h, rotary, mask)
        return plain.logits(h[rows, positions]).float()

    if key not in model.compat.edit_checks:
        probe = torch.randn(h_out.shape, generator=torch.Generator().manual_seed(0)).to(h_out) * 0.5
        with torch.no_grad():
            want, got = bridge(probe), fast(probe)
        ok = float((want - got).abs().max()) <= 1e-4 * (float(want.abs().max()) + 1e-6)
        model.compat.edit_checks[key] = ok
        if not ok:
            return bridge
    return fast


def train_value(model: Model, layer: int, rows: TargetRows, key_pos: int, init: Tensor, warm: Tensor, *,
                n_iter: int, lr: float, early_stop_nll: float | None) -> tuple[Tensor, int, float]:
    """A memory value for one row: Adam on the value at ``key_pos`` (the only replaced position) against the
    target tokens' NLL. Returns ``(value, steps, final NLL)``.

    The value replaces the MLP output there, i.e. adds ``value - warm`` to ``hook_mlp_out`` at that
    position: the v*/z optimisation's forward (:func:`knowscope.editing.vpaths.selected_logits_fn`, the
    fastest path checked on this model) computes it; Adam's steps on ``value - warm`` are its steps on
    ``value``. ``early_stop_nll``: stop once every target token is the argmax and the mean NLL is below it
    (``None``: always ``n_iter`` steps)."""
    r, p, tgt = rows.read_positions()
    hook = hk.mlp_out(layer)
    if not any(name == hook for name, _ in model.compat.edit_checks):
        # a path's check against the bridge is kept only from rows whose positions differ (one row would
        # be checked again on every call): check once with the row twice, at two positions
        two = torch.tensor([key_pos, key_pos - 1], device=rows.tokens.device)
        selected_logits_fn(model, hook, rows.tokens.repeat(2, 1), two, r, p, lambda act: None)
    look = torch.tensor([key_pos], device=rows.tokens.device)
    forward = selected_logits_fn(model, hook, rows.tokens, look, r, p, lambda act: None)
    delta = torch.nn.Parameter((init - warm).float().clone())
    opt = torch.optim.Adam([delta], lr=lr)
    nll = float("nan")
    steps = 0
    for steps in range(1, n_iter + 1):  # noqa: B007 - the count is returned
        logits = forward(delta[None])
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        nll = float(loss.detach())
        if early_stop_nll is not None and nll < early_stop_nll and bool((logits.argmax(-1) == tgt).all()):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (warm + delta.detach()).float(), steps, nll
