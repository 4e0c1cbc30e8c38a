"""Keep the retain set's computation: confine each trained matrix's change to input directions the retain
set does not use.

A weight matrix ``W`` (HF layout ``[out, in]``) acts on its input ``k`` at every position. If the change
``ΔW`` satisfies ``ΔW k = 0`` for every input ``k`` the matrix sees while the model reads a retain prompt and
its answer, the matrix's output on the retain set is what it was; when every trained matrix's change has
that property, the retain sequences' whole forward pass is unchanged (each layer's inputs on them are the
unedited ones), so their teacher-forced answers stay exactly as they were. This is the null-space
constraint AlphaEdit puts on a MEMIT update (there: the keys of preserved knowledge), here on each unlearning
step: after the optimiser's step, ``ΔW ← ΔW · P`` with ``P = I − U Uᵀ``, ``U`` the retain inputs' principal
directions.

Which directions count as "used by the retain set" is ``energy``: the inputs (each scaled to unit length, so
that no position, BOS included, outweighs the rest by its norm) are decomposed, and the fewest leading
eigenvectors of their second-moment matrix that hold ``energy`` of its trace are removed. ``energy=1`` removes
every direction with a non-negligible eigenvalue (exact preservation of the given retain sequences, and the
least room to forget); smaller values leave more room and preserve the retain set approximately. What it
does to retain items *not* given (other subjects with the same answer) is measured, not implied:
``benchmarks/bench_unlearning.py`` holds part of the retain set out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from knowscope.editing.keys import pad
from knowscope.models import Model

Pair = tuple[tuple[int, ...], tuple[int, ...]]  # (BOS-prepended prompt ids, answer ids), as in .train

#: eigenvalues below this share of the largest are numerically zero (not a direction the inputs use)
RANK_TOL = 1e-6


def _modules(model: Model, names: Sequence[str]) -> dict[str, nn.Module]:
    """The HF ``nn.Linear`` behind each clean weight name (``...down_proj.weight`` -> its module)."""
    by_clean: dict[str, nn.Module] = {}
    for mod_name, mod in model.hf.named_modules():
        clean = mod_name.replace("._original_component", "")
        if isinstance(mod, nn.Linear):
            by_clean[clean + ".weight"] = mod
    missing = [n for n in names if n not in by_clean]
    if missing:
        raise ValueError(f"no linear module holds {missing[0]!r}: the retain projection needs nn.Linear weights")
    return {n: by_clean[n] for n in names}


@torch.no_grad()
def retain_inputs(model: Model, names: Sequence[str], pairs: Sequence[Pair],
                  batch: int = 16) -> dict[str, Float[Tensor, "n_pos d_in"]]:
    """Each named matrix's input at every real position of each retain sequence (prompt and answer but its
    last token: what the model reads when it is scored on the retain answers)."""
    mods = _modules(model, names)
    rows = [list(p + a)[:-1] for p, a in pairs]
    got: dict[str, list[Tensor]] = {n: [] for n in names}
    mask: list[Tensor] = []
    handles = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            got[name].append(args[0].detach().float().cpu())
        return hook

    try:
        for n, m in mods.items():
            handles.append(m.register_forward_pre_hook(make(n)))
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            width = max(len(r) for r in chunk)
            mask.append(torch.tensor([[j < len(r) for j in range(width)] for r in chunk]))
            model(pad(model, chunk))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        acts = [a[m] for a, m in zip(got[n], mask, strict=True)]
        out[n] = torch.cat(acts)
    return out


def projector(inputs: Float[Tensor, "n d"], energy: float) -> Float[Tensor, "d d"]:
    """``P = I − U Uᵀ``: removes the fewest leading principal directions of the unit-scaled ``inputs`` that
    hold ``energy`` of their second moment (module docstring)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    k = inputs.double()
    k = k / k.norm(dim=1, keepdim=True).clamp_min(1e-12)
    evals, evecs = torch.linalg.eigh(k.T @ k / len(k))
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    used = evals > RANK_TOL * evals[0]
    share = torch.cumsum(evals, 0) / evals.sum()
    n_keep = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    n_keep = min(n_keep, int(used.sum().item()))
    u = evecs[:, :n_keep]
    return (torch.eye(k.shape[1], dtype=torch.float64) - u @ u.T).float()


def retain_projectors(model: Model, names: Sequence[str], pairs: Sequence[Pair],
                      energy: float) -> dict[str, Float[Tensor, "d_in d_in"]]:
    """A projector per named matrix from the retain sequences' inputs to it (on the model's device)."""
    if not pairs:
        raise ValueError("the retain projection needs a retain set")
    inputs = retain_inputs(model, names, pairs)
    return {n: projector(x, energy).to(model.device) for n, x in inputs.items()}


@torch.no_grad()
def project_deltas(params: dict[str, nn.Parameter], saved: dict[str, Tensor],
                   projectors: dict[str, Tensor]) -> None:
    """``W ← W₀ + (W − W₀) P`` for each parameter with a projector (in place)."""
    for n, p in projectors.items():
        delta = (params[n].detach().float() - saved[n].float()) @ p
        params[n].copy_((saved[n].float() + delta).to(params[n].dtype))
