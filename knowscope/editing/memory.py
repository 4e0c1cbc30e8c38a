"""Side memories: edits kept beside the weights, behind a router (GRACE's codebook, WISE's side MLP).

A side memory sits at one layer's MLP output projection (``down_proj`` / ``c_proj``, the "value
matrix" that ROME and WISE edit). Two HookPoints of that module carry it: ``hook_in`` sees the
projection's input ``a`` (the MLP's key activations, ``d_mlp`` wide) and ``hook_out`` its output; the
memory reads ``a`` and may change the output, position by position. Because the hooks sit on the
bridge's HookPoints they act in every forward pass knowscope makes (the bridge's own, single blocks,
the HF model under generation), and the plain-tensor blocks, which would bypass hooks, step aside
while a memory is attached.

Edits change the memory, never the weights. The :class:`~knowscope.editing.session.EditResult` of a
memory editor carries ``memory`` arrays (what the edit writes, in the memory kind's layout, see
:meth:`SideMemory.apply`) and ``extra["memory"]`` (kind, layer, the memory's fixed ``spec``).
:class:`~knowscope.editing.session.EditSession` applies it and keeps what it overwrote, so undo brings
the memory back bit for bit; once no memory edit is applied the hooks are removed and the model is
exactly the unedited one. A model carries at most one side memory (one kind at one layer).

Every memory answers :meth:`SideMemory.route`: per prompt, which memory answered at the position
routed most strongly, its routing score and the threshold it was held against (evaluate()'s
``routing``, the viewer's edit page).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from knowscope.models import Model

logger = logging.getLogger(__name__)


STATE_PREFIX = "state/"


@dataclass(frozen=True)
class _Checkpoint:
    """What a checkpoint overwrote: the memory's whole state and edit count."""

    state: dict[str, Tensor]
    n_edits: int


def _is_checkpoint(arrays: dict[str, Tensor]) -> bool:
    return any(k.startswith(STATE_PREFIX) for k in arrays)


class MemoryMismatchError(ValueError):
    """A memory edit does not fit the model or the memory it carries (kind, layer, shapes, settings)."""


@dataclass(frozen=True)
class Route:
    """How one prompt was routed: at ``position`` (``token``), the one routed most strongly (else the closest),
    ``memory`` answered: ``"main"`` (the weights) or the side memory's entry; ``score`` was held against
    ``threshold`` (GRACE: distance to the nearest key, routed when below; WISE: activation score, routed
    when above)."""

    prompt: str
    memory: str
    score: float
    threshold: float
    routed: bool
    position: int = -1
    token: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def value_module(model: Model, layer: int) -> nn.Module:
    """Layer ``layer``'s MLP output projection as the bridge wraps it (with ``hook_in`` / ``hook_out``)."""
    if not 0 <= layer < model.arch.n_layers:
        raise ValueError(f"layer {layer} is out of range: {model.name} has layers 0..{model.arch.n_layers - 1}")
    name = model.arch.mlp_out_name(layer).rsplit(".", 1)[0]
    module = model.hf.get_submodule(name)
    for hook in ("hook_in", "hook_out"):
        if not isinstance(getattr(module, hook, None), nn.Module):
            raise MemoryMismatchError(f"{name} has no {hook} HookPoint in this TransformerLens build; a side memory "
                                      "needs both to read the projection's input and change its output")
    return module


class SideMemory:
    """Base of the side memories: hook plumbing, pausing, and the interface the session drives.

    Subclasses define :attr:`kind`, :meth:`rewrite` (the forward change), :meth:`scores` (routing),
    :meth:`apply` / :meth:`revert` (one edit's arrays in, what they overwrote out), :meth:`state` /
    :meth:`load_state` (a full snapshot for checkpoints) and :attr:`n_edits`.
    """

    kind: ClassVar[str] = ""
    #: True when a higher score routes to the memory (WISE); False when a lower one does (GRACE)
    higher_routes: ClassVar[bool] = True

    def __init__(self, model: Model, layer: int, spec: dict[str, Any]) -> None:
        self.model = model
        self.layer = int(layer)
        self.spec = dict(spec)
        self.module = value_module(model, layer)
        self.d_in, self.d_out = model.arch.d_mlp, model.arch.d_model
        self._handles: list[Any] = []
        self._paused = 0
        self._last_in: Tensor | None = None

    # --- attachment ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self.attached:
            return
        self._handles = [self.module.hook_in.register_forward_hook(self._read_in),
                         self.module.hook_out.register_forward_hook(self._write_out)]
        self.model._side_memory = self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._last_in = None
        if getattr(self.model, "_side_memory", None) is self:
            self.model._side_memory = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The weights alone answer inside the block (the unedited model, for locality references)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """No hooks at all inside the block (an editor's own training passes: the weights alone, and the
        plain-tensor forward path free to run); attached again after."""
        was = self.attached
        self.detach()
        try:
            yield
        finally:
            if was:
                self.attach()

    @property
    def active(self) -> bool:
        return self.attached and not self._paused and self.n_edits > 0

    def _read_in(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._last_in = output

    def _write_out(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        a, self._last_in = self._last_in, None
        if a is None or not self.active:
            return None
        return self.rewrite(a, output)

    # --- edits: the session drives these --------------------------------------------------------
    n_edits: int = 0  # memory edits written and not reverted (the hooks act only while > 0)

    def validate(self, arrays: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Raise :class:`MemoryMismatchError` unless an edit's arrays (or a checkpoint's) fit this memory."""
        if _is_checkpoint(arrays):
            missing = sorted(set(self.state()) - {k[len(STATE_PREFIX):] for k in arrays})
            if missing:
                raise MemoryMismatchError(f"a {self.kind} checkpoint lacks {missing}")
            return
        self.check(arrays, meta)

    def apply(self, arrays: dict[str, Tensor], meta: dict[str, Any]) -> Any:
        """Write one edit into the memory (or, for a :meth:`checkpoint`, replace all it holds); return what
        it overwrote (for :meth:`revert`)."""
        self.validate(arrays, meta)
        if _is_checkpoint(arrays):
            before = _Checkpoint(self.state(), self.n_edits)
            state = {k[len(STATE_PREFIX):]: v for k, v in arrays.items()}
            n_edits = int(state.pop("n_edits")[0])
            self.load_state(state)
            self.n_edits = n_edits
            return before
        token = self._write(arrays)
        self.n_edits += 1
        return token

    def revert(self, token: Any) -> None:
        """Restore what :meth:`apply` overwrote, bit for bit."""
        if isinstance(token, _Checkpoint):
            self.load_state(token.state)
            self.n_edits = token.n_edits
            return
        self._unwrite(token)
        self.n_edits -= 1

    def checkpoint(self) -> dict[str, Tensor]:
        """One edit's arrays that set everything this memory holds (and its edit count) at once: what a
        resumable sequential run saves instead of hundreds of small edits."""
        arrays = {f"{STATE_PREFIX}{k}": v.cpu().clone() for k, v in self.state().items()}
        arrays[f"{STATE_PREFIX}n_edits"] = torch.tensor([self.n_edits])
        return arrays

    # --- what subclasses define ------------------------------------------------------------------
    def check(self, arrays: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Raise :class:`MemoryMismatchError` unless an edit's arrays fit this memory."""
        raise NotImplementedError

    def _write(self, arrays: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def _unwrite(self, token: Any) -> None:
        raise NotImplementedError

    def rewrite(self, a: Float[Tensor, "batch pos d_mlp"],
                out: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The projection's output with the memory's answers where it routes (no change elsewhere)."""
        raise NotImplementedError

    def scores(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor, list[str]]:
        """Per row of ``a``: routing score, the threshold it is held against, the name of the memory that
        answers if routed."""
        raise NotImplementedError

    def state(self) -> dict[str, Tensor]:
        """Everything the memory holds, as arrays (a checkpoint; :meth:`load_state` reads it back)."""
        raise NotImplementedError

    def load_state(self, arrays: dict[str, Tensor]) -> None:
        raise NotImplementedError

    # --- routing, as a user sees it ----------------------------------------------------------------
    @torch.no_grad()
    def route(self, prompts: Sequence[str]) -> list[Route]:
        """Per prompt: the position routed most strongly (or, when none is, closest to being routed), which
        memory answered there, its score and the threshold it was held against."""
        if not prompts:
            return []
        inputs = value_inputs(self.model, self.layer, prompts)
        score, threshold, names = self.scores(torch.cat(inputs))
        strength = (score - threshold) if self.higher_routes else (threshold - score)
        out, at = [], 0
        for p, a in zip(prompts, inputs, strict=True):
            n = a.shape[0]
            i = at + (int(strength[at : at + n].argmax()) if self.n_edits else n - 1)
            routed = self.n_edits > 0 and float(strength[i]) > 0
            tokens = self.model.to_str_tokens(p)
            out.append(Route(p, names[i] if routed else "main", float(score[i]), float(threshold[i]), routed,
                             i - at, tokens[i - at] if i - at < len(tokens) else ""))
            at += n
        return out


@torch.no_grad()
def value_inputs(model: Model, layer: int, prompts: Sequence[str], batch_size: int = 32) -> list[Tensor]:
    """The value projection's input ``[pos, d_mlp]`` at every position of each prompt (BOS-prepended)."""
    module = value_module(model, layer)
    rows: list[Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [model.to_tokens(p)[0] for p in prompts[start : start + batch_size]]
        width = max(len(t) for t in chunk)
        tokens = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
        for i, t in enumerate(chunk):
            tokens[i, : len(t)] = t
        seen: list[Tensor] = []
        handle = module.hook_in.register_forward_hook(_appender(seen))
        try:
            with forward_until(module):
                model(tokens.to(model.device))
        finally:
            handle.remove()
        rows.extend(seen[0][i, : len(t)].float() for i, t in enumerate(chunk))
    return rows


def last_inputs(model: Model, layer: int, prompts: Sequence[str], batch_size: int = 32) -> Float[Tensor, "n d_mlp"]:
    """The value projection's input at each prompt's last position."""
    return torch.stack([a[-1] for a in value_inputs(model, layer, prompts, batch_size)])


def routing_figure(rows: Sequence[dict[str, Any]], kind: str) -> Any:
    """Routing of prompts (rows as in ``EditMetrics.routing()``: kind, prompt, memory, token, score,
    threshold) by prompt kind, as the margin that decides it: > 0 goes to the memory (WISE: score -
    threshold; GRACE: radius - distance)."""
    import plotly.graph_objects as go

    lower_routes = kind in ("grace", "factkey")
    fig = go.Figure()
    for k, color in (("rewrite", "#d62728"), ("paraphrase", "#ff7f0e"), ("neighborhood", "#1f77b4")):
        pts = [r for r in rows if r["kind"] == k]
        if not pts:
            continue
        margin = [(r["threshold"] - r["score"]) if lower_routes else (r["score"] - r["threshold"]) for r in pts]
        fig.add_trace(go.Box(y=margin, name=k, boxpoints="all", jitter=0.4, marker_color=color,
                             text=[f"{r['prompt']}<br>{r['memory']} at {r['token']!r}: score {r['score']:.3g}, "
                                   f"threshold {r['threshold']:.3g}" for r in pts], hoverinfo="text"))
    fig.add_hline(y=0, line={"color": "black", "dash": "dash"}, annotation_text="routed above")
    what = "radius - distance" if lower_routes else "score - threshold"
    fig.update_layout(title=f"Routing of the {kind.upper()} memory ({what}; > 0 goes to the memory)",
                      yaxis_title=what, template="plotly_white", height=380, showlegend=False)
    return fig


def _appender(store: list[Tensor]) -> Any:
    def hook(module: nn.Module, args: Any, out: Tensor) -> None:
        store.append(out.detach())

    return hook


class _Stop(Exception):
    """Ends a forward pass once a module has run (nothing above it is needed)."""


@contextlib.contextmanager
def forward_until(module: nn.Module) -> Iterator[None]:
    """Inside the block a forward pass ends, quietly, once ``module`` has run: hooks inside it (its
    ``hook_in`` / ``hook_out``) and those registered on it before still see their values, and nothing
    above it is computed."""
    def stop(m: nn.Module, args: Any, out: Any) -> None:
        raise _Stop

    handle = module.register_forward_hook(stop)
    try:
        yield
    except _Stop:
        pass
    finally:
        handle.remove()


#: memory kinds by name, filled by the modules that define them (grace, wise)
KINDS: dict[str, type[SideMemory]] = {}
#: the module that defines each built-in kind, imported by :func:`memory_kind` when a saved edit names
#: the kind before its editor was imported (loading a session in a fresh process)
KIND_MODULES = {"grace": "knowscope.editing.grace", "wise": "knowscope.editing.wise",
                "factkey": "knowscope.editing.factkey"}


def register_kind(cls: type[SideMemory]) -> type[SideMemory]:
    KINDS[cls.kind] = cls
    return cls


def memory_of(model: Model) -> SideMemory | None:
    """The side memory ``model`` carries now, or None."""
    return getattr(model, "_side_memory", None)


def memory_kind(kind: Any) -> type[SideMemory]:
    """The memory class of ``kind``; a built-in kind's module is imported on first use."""
    if not isinstance(kind, str):
        raise MemoryMismatchError("a memory edit names no side-memory kind" + (f" (got {kind!r})" if kind else ""))
    if kind not in KINDS and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])  # registers the kind
    if kind not in KINDS:
        known = sorted(set(KINDS) | set(KIND_MODULES))
        raise MemoryMismatchError(f"unknown side-memory kind {kind!r}; known: {', '.join(known)}")
    return KINDS[kind]


def memory_for(model: Model, meta: dict[str, Any]) -> SideMemory:
    """The model's memory that an edit with ``meta`` (``extra["memory"]``) writes into: the one attached,
    if it is of that kind, layer and spec, else a new empty one (not attached yet). Refuses a mismatch."""
    kind, layer, spec = meta.get("kind"), meta.get("layer"), meta.get("spec") or {}
    cls = memory_kind(kind)
    current = memory_of(model)
    if current is not None and current.n_edits > 0:
        if current.kind != kind or current.layer != layer:
            raise MemoryMismatchError(
                f"{model.name!r} carries a {current.kind} memory at layer {current.layer} with {current.n_edits} "
                f"edit(s); a {kind} edit at layer {layer} cannot join it (one side memory per model: undo those "
                "edits first)")
        if current.spec != spec:
            diff = sorted(k for k in set(spec) | set(current.spec) if spec.get(k) != current.spec.get(k))
            raise MemoryMismatchError(f"this {kind} edit was made for a memory with other settings "
                                      f"({', '.join(diff)} differ) than the one {model.name!r} carries")
        return current
    if current is not None:
        current.detach()
    return cls(model, int(layer), spec)
