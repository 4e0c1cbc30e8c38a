"""Edits as data, and a session that applies, undoes and saves them.

An :class:`EditResult` is what every editor (ROME, MEMIT, FT, DINM) returns: weight *deltas* keyed by
clean HF parameter name, in the parameter's stored layout, plus the metadata needed to reproduce and
check it (method, hyperparameters, requests, layers, the base model's fingerprint, seconds). Editors
never leave the model changed; :class:`EditSession` is the one place weights are written.

``EditSession`` keeps a bit-exact copy of every parameter it ever touches, so ``undo()`` and
``rollback()`` restore weights bit-for-bit (no subtract-the-delta rounding), an apply that fails half
way leaves the weights exactly as they were, and ``unedited()`` lends the original weights for
comparisons (locality against the unedited model, activation shift) without copying the model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from knowscope.editing.memory import MemoryMismatchError, SideMemory, memory_for, memory_of
from knowscope.models import Model
from knowscope.results import ResultFormatError, load_dir, register, result_kind, save_dir

logger = logging.getLogger(__name__)


#: saved memory arrays of an edit live under this prefix (beside the deltas' parameter names)
MEMORY_PREFIX = "memory/"

#: the largest ||delta|| / ||W|| an edit may have (ROME/MEMIT deltas are ~0.01-0.5; DINM/FT below 1)
MAX_RELATIVE_DELTA = 10.0


class EditMismatchError(ValueError):
    """An edit does not fit this model (other fingerprint, unknown parameter, wrong shape)."""


@dataclass
class EditResult:
    """Weight deltas by HF parameter name (stored layout) and what produced them."""

    method: str
    deltas: dict[str, Tensor]
    fingerprint: str
    layers: list[int] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    model_name: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: what a memory editor (GRACE, WISE) writes into the side memory, in that memory's layout
    #: (:mod:`knowscope.editing.memory`); ``extra["memory"]`` names the memory (kind, layer, spec)
    memory: dict[str, Tensor] = field(default_factory=dict)

    @property
    def is_memory_edit(self) -> bool:
        """True for an edit that writes a side memory (GRACE, WISE) rather than the weights."""
        return "memory" in self.extra

    def meta(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fingerprint": self.fingerprint,
            "layers": list(self.layers),
            "hparams": self.hparams,
            "requests": self.requests,
            "model_name": self.model_name,
            "seconds": self.seconds,
            "extra": self.extra,
            "parameters": {k: list(v.shape) for k, v in self.deltas.items()},
            "memory_arrays": {k: list(v.shape) for k, v in self.memory.items()},
        }

    def arrays(self) -> dict[str, Tensor]:
        """Every array of the edit by its saved name: the deltas, and the memory's under ``memory/``."""
        return {**self.deltas, **{f"{MEMORY_PREFIX}{k}": v for k, v in self.memory.items()}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``meta.json`` + ``arrays.safetensors`` (one array per edited parameter / memory array)."""
        return save_dir(path, "edit", self.meta(), self.arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EditResult:
        meta, arrays = load_dir(path, "edit")
        return cls._from(meta, arrays)

    @classmethod
    def _from(cls, meta: dict[str, Any], arrays: dict[str, Tensor]) -> EditResult:
        return cls(
            method=meta["method"],
            deltas={k: arrays[k] for k in meta["parameters"]},
            memory={k: arrays[f"{MEMORY_PREFIX}{k}"] for k in meta.get("memory_arrays", {})},
            fingerprint=meta["fingerprint"],
            layers=list(meta.get("layers", [])),
            hparams=meta.get("hparams", {}),
            requests=meta.get("requests", []),
            model_name=meta.get("model_name", ""),
            seconds=float(meta.get("seconds", 0.0)),
            extra=meta.get("extra", {}),
        )

    def norms(self) -> dict[str, float]:
        """Frobenius norm of each delta (a quick size check of an edit)."""
        return {k: float(v.float().norm()) for k, v in self.deltas.items()}

    def __repr__(self) -> str:
        what = f"memory={sorted(self.memory)}" if self.is_memory_edit else f"params={len(self.deltas)}"
        return f"EditResult({self.method}, layers={self.layers}, n_requests={len(self.requests)}, {what})"


class EditSession:
    """Apply, undo, roll back, save and load edits on one model, in place.

    >>> session = EditSession(model)
    >>> session.apply(rome_result)        # weights now edited
    >>> with session.unedited(): ...      # original weights for the duration
    >>> session.undo()                    # back to before the last apply, bit for bit
    >>> with session.temporary(result): ...  # applied only inside the block

    One model has one edit ledger: while a session has edits applied, another session on the same
    model refuses to apply (undoing in two sessions would otherwise leave edits no history knows).
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._original: dict[str, Tensor] = {}
        # (edit, weights it overwrote, what it overwrote in the side memory or None)
        self._stack: list[tuple[EditResult, dict[str, Tensor], Any]] = []

    def _owner(self) -> EditSession | None:
        return _ledger_owner(self.model)

    def _claim(self) -> None:
        owner = self._owner()
        if owner is not None and owner is not self:
            raise EditMismatchError(
                f"{self.model.name!r} already carries {len(owner._stack)} edit(s) applied by another EditSession; "
                "apply through that session, or undo / roll back its edits first")

    def _release_if_clean(self) -> None:
        if not self._stack and self._owner() in (None, self):
            self.model._edit_owner = None

    # --- state ------------------------------------------------------------------------------
    @property
    def history(self) -> list[EditResult]:
        """Edits applied so far, oldest first."""
        return [r for r, _, _ in self._stack]

    @property
    def touched(self) -> list[str]:
        return sorted(self._original)

    @property
    def memory(self) -> SideMemory | None:
        """The side memory the applied memory edits (GRACE, WISE) live in, or None."""
        return memory_of(self.model) if any(t is not None for _, _, t in self._stack) else None

    def check(self, result: EditResult) -> None:
        """Raise :class:`EditMismatchError` unless ``result`` fits this model exactly."""
        if result.fingerprint != self.model.fingerprint:
            raise EditMismatchError(
                f"this edit was made on a different model (fingerprint {result.fingerprint}, "
                f"model {result.model_name!r}); the loaded model {self.model.name!r} has fingerprint "
                f"{self.model.fingerprint}"
            )
        if result.deltas and self.memory is not None:
            raise EditMismatchError(
                f"{self.model.name!r} carries {self.memory.n_edits} memory edit(s) ({self.memory.kind}); weight "
                "edits go below memory edits (a memory's keys are read on the weights as they were when it was "
                "written): undo the memory edits, apply the weight edit, then the memory edits again")
        if result.is_memory_edit:
            try:
                memory_for(self.model, result.extra["memory"]).validate(result.memory, result.extra["memory"])
            except MemoryMismatchError as exc:
                raise EditMismatchError(str(exc)) from None
        params = self.model.named_parameters()
        for name, delta in result.deltas.items():
            if name not in params:
                raise EditMismatchError(f"the edit changes parameter {name!r}, which {self.model.name!r} does not have")
            if tuple(delta.shape) != tuple(params[name].shape):
                raise EditMismatchError(
                    f"delta for {name!r} has shape {tuple(delta.shape)}, the parameter {tuple(params[name].shape)}"
                )
            param = params[name]
            cast = delta.to(dtype=param.dtype)  # a finite float64 delta can overflow in the weight's dtype
            if not torch.isfinite(cast).all():
                raise EditMismatchError(f"delta for {name!r} is NaN or inf in the weight's dtype ({param.dtype}); "
                                        "refusing to apply it")
            # scale: the weight's norm, at least that of entries of RMS 1 (zero-initialised biases)
            scale = max(float(param.detach().double().norm()), math.sqrt(param.numel()))
            d_norm = float(cast.double().norm())
            if d_norm > MAX_RELATIVE_DELTA * scale:
                raise EditMismatchError(
                    f"delta for {name!r} has norm {d_norm:.3g}, {d_norm / scale:.3g} x the weight's scale "
                    f"{scale:.3g} (more than {MAX_RELATIVE_DELTA:g} x is not an edit); refusing to apply it")
            if not torch.isfinite(param.detach() + cast.to(param.device)).all():
                raise EditMismatchError(f"applying the delta for {name!r} overflows the weight; refusing to apply it")

    # --- applying ---------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, result: EditResult) -> EditResult:
        """Add the result's deltas to the weights, or write a memory edit into the side memory.

        On any failure the weights and the memory are left untouched. Order: weight edits first, memory
        edits on top (a weight edit while memory edits are applied is refused; see :meth:`check`).
        """
        self._claim()
        self.check(result)
        params = self.model.named_parameters()
        before = {name: params[name].detach().clone() for name in result.deltas}
        for name, value in before.items():
            self._original.setdefault(name, value.clone())
        token = None
        try:
            for name, delta in result.deltas.items():
                p = params[name]
                p.add_(delta.to(device=p.device, dtype=p.dtype))
            if result.is_memory_edit:
                memory = memory_for(self.model, result.extra["memory"])
                token = memory.apply(result.memory, result.extra["memory"])
                memory.attach()
        except BaseException:
            self._restore(before)
            raise
        self._stack.append((result, before, token))
        self.model._edit_owner = weakref.ref(self)
        logger.info("applied %r", result)
        return result

    @torch.no_grad()
    def undo(self) -> EditResult:
        """Undo the last applied edit (restores the exact weights / memory from before it)."""
        if not self._stack:
            raise ValueError("nothing to undo: no edit has been applied in this session")
        result, before, token = self._stack.pop()
        self._restore(before)
        if token is not None:
            self._revert_memory(token)
        self._release_if_clean()
        return result

    @torch.no_grad()
    def rollback(self) -> None:
        """Restore every touched parameter and the side memory to their original values, bit for bit, and
        clear the history."""
        for _, _, token in reversed(self._stack):  # memory edits sit on top of weight edits
            if token is not None:
                self._revert_memory(token)
        self._restore(self._original)
        self._stack.clear()
        self._release_if_clean()

    def _revert_memory(self, token: Any) -> None:
        memory = memory_of(self.model)
        if memory is None:
            raise RuntimeError("a memory edit is on the stack but the model carries no side memory")
        memory.revert(token)
        if memory.n_edits == 0:
            memory.detach()

    @torch.no_grad()
    def _restore(self, values: dict[str, Tensor]) -> None:
        params = self.model.named_parameters()
        for name, value in values.items():
            params[name].copy_(value)

    @contextlib.contextmanager
    def temporary(self, result: EditResult) -> Iterator[EditResult]:
        """Apply ``result`` for the duration of a ``with`` block, then undo it."""
        self.apply(result)
        depth = len(self._stack)
        try:
            yield result
        finally:
            while len(self._stack) >= depth:
                self.undo()

    @torch.no_grad()
    def checkpoint_deltas(self) -> dict[str, Tensor]:
        """Every touched parameter's change since the session began (today's weights minus the original ones,
        in the weights' dtype): one edit that stands for the whole history (a lifelong run's checkpoint).
        Applied to the original weights it gives today's weights up to an ulp where an edit cancelled a weight."""
        params = self.model.named_parameters()
        return {name: (params[name].detach() - orig).cpu().contiguous()
                for name, orig in sorted(self._original.items())}

    @contextlib.contextmanager
    def unedited(self) -> Iterator[Model]:
        """The original weights, side memory paused, for the duration of a ``with`` block; the edits come
        back after."""
        params = self.model.named_parameters()
        current = {name: params[name].detach().clone() for name in self._original}
        memory = self.memory
        self._restore(self._original)
        try:
            with memory.paused() if memory is not None else contextlib.nullcontext():
                yield self.model
        finally:
            self._restore(current)

    # --- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the applied edits (each one's deltas and metadata, in order) to a directory."""
        arrays: dict[str, Tensor] = {}
        metas = []
        for i, (result, _, _) in enumerate(self._stack):
            metas.append(result.meta())
            for name, array in result.arrays().items():
                arrays[f"{i}/{name}"] = array
        meta = {"fingerprint": self.model.fingerprint, "model_name": self.model.name, "edits": metas}
        return save_dir(path, "edit_session", meta, arrays)

    @staticmethod
    def load_edits(path: str | os.PathLike[str]) -> list[EditResult]:
        """The edits saved at ``path`` (a session or a single :class:`EditResult`), in order; no model needed."""
        if result_kind(path) == "edit":
            return [EditResult.load(path)]
        meta, arrays = load_dir(path, "edit_session")
        edits = meta.get("edits")
        if not isinstance(edits, list):
            raise ResultFormatError(f"{path}: 'edits' must be a list of edit metadata")
        return [
            EditResult._from(m, {k.split("/", 1)[1]: v for k, v in arrays.items() if k.split("/", 1)[0] == str(i)})
            for i, m in enumerate(edits)
        ]

    @classmethod
    def load(cls, model: Model, path: str | os.PathLike[str]) -> EditSession:
        """A new session on ``model`` with the saved edits re-applied (refuses another model's edits).

        Accepts a saved session or a single saved :class:`EditResult`. All or nothing: if one edit does
        not fit, the ones already applied are rolled back.
        """
        if result_kind(path) != "edit":
            meta, _ = load_dir(path, "edit_session")
            if meta.get("fingerprint") != model.fingerprint:
                raise EditMismatchError(
                    f"{path} holds edits of a different model (fingerprint {meta.get('fingerprint')}, "
                    f"{meta.get('model_name')!r}); the loaded model has fingerprint {model.fingerprint}"
                )
        results = cls.load_edits(path)
        session = cls(model)
        try:
            for r in results:
                session.apply(r)
        except BaseException:
            session.rollback()
            raise
        return session


def _edit_words(m: dict[str, Any]) -> str:
    reqs = m.get("requests") or []
    first = reqs[0] if reqs else {}
    if isinstance(first, dict) and "requested_rewrite" in first:
        first = first["requested_rewrite"]
    what = f"{first.get('subject', '?')} -> {first.get('target_new', '?')!r}" if first else "no requests"
    more = f" (+{len(reqs) - 1} more)" if len(reqs) > 1 else ""
    return f"{m.get('method', '?')} at layers {m.get('layers')}: {what}{more}"


def _session_headline(m: dict[str, Any]) -> str:
    edits = m.get("edits") or []
    return f"{len(edits)} edit(s)" + (f"; last: {_edit_words(edits[-1])}" if edits else "")


register("edit", EditResult.load, _edit_words)
register("edit_session", EditSession.load_edits, _session_headline)


def unedited_weights(model: Model) -> contextlib.AbstractContextManager[Model]:
    """The model with its base weights for the duration: the ledger's session lends them
    (:meth:`EditSession.unedited`) when edits are applied, else the model is already unedited.

    Caches keyed by the base model's fingerprint (key statistics, context templates) are computed
    inside this, so an edit made on top of other edits never reads or writes them on edited weights.
    """
    owner = _ledger_owner(model)
    return owner.unedited() if owner is not None else contextlib.nullcontext(model)


def applied_edits(model: Model) -> list[EditResult]:
    """The edits ``model`` carries now, oldest first (its edit ledger's history; empty when unedited).

    Editors whose state follows the edits made before (UltraEdit's lifelong statistics) read it here, so
    an undo, a reloaded session or a resumed run gives them the state of the edits actually applied."""
    owner = _ledger_owner(model)
    return owner.history if owner is not None else []


def _ledger_owner(model: Model) -> EditSession | None:
    """The session whose edits ``model`` carries now (the model's edit ledger), or None."""
    ref = getattr(model, "_edit_owner", None)
    owner = ref() if ref is not None else None
    return owner if owner is not None and owner._stack else None
