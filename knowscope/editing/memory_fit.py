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

from knowscope.editing.keys import context_templates
from knowscope.editing.memory import SideMemory, value_inputs
from knowscope.models import Model
from knowscope.models.blocks import final_logits, run_block


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


def forward_from(model: Model, layer: int, h: Float[Tensor, "batch pos d_model"], rows: Tensor,
                 positions: Tensor) -> Float[Tensor, "n vocab"]:
    """Blocks ``layer..top`` on ``h`` (block ``layer``'s input), then the logits at ``(rows, positions)`` only.
    Hooks on those blocks fire (a memory's training hook among them); autograd flows when enabled."""
    for block in range(layer, model.arch.n_layers):
        h = run_block(model, block, h)
    return final_logits(model, h[rows, positions]).float()


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
