"""The editors knowscope has, behind one signature: ``edit(model, requests, layers=..., hparams=..., stats=...)``.

The CLI, the demo and the viewer's Edit lab pick an editor by name here instead of dispatching on
strings of their own. Every editor returns an :class:`~knowscope.editing.session.EditResult` and
leaves the model's weights as they were; apply the result with an ``EditSession``. Key statistics
and context templates are computed on the base weights whatever edits are applied
(:func:`~knowscope.editing.session.unedited_weights`), so callers need not prepare any cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from knowscope.editing import factkey, ft, grace, memit, rome, ultraedit, wise
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.session import EditResult
from knowscope.facts import Fact
from knowscope.models import Model

EditorName = Literal["rome", "memit", "ft", "grace", "wise", "factkey", "ultraedit"]


@dataclass(frozen=True)
class Editor:
    """One editing method: its function, its hyperparameter class and how it treats layers."""

    name: str
    label: str
    edit: Callable[..., EditResult]
    hparams: type
    batched: bool  # one update for many facts (MEMIT) rather than one per fact
    layer_window: bool  # edits a window of layers (MEMIT) rather than one layer
    memory: bool = False  # writes a side memory (GRACE, WISE) rather than the weights
    lifelong: bool = False  # a weight editor made for one edit after another, carrying state (UltraEdit)

    def __call__(self, model: Model, requests: Sequence[Fact], layers: Any = None, hparams: Any = None,
                 stats: Any = None, **options: Any) -> EditResult:
        return self.edit(model, list(requests), layers=layers, hparams=hparams, stats=stats, **options)

    def default_layers(self, model: Model) -> list[int]:
        """The layers this editor uses on ``model`` when none are given."""
        hp = self.hparams.for_model(model)
        if self.layer_window:
            return list(hp.layers)
        layer = getattr(hp, "layer", None)
        return [0 if layer is None else int(layer)]


EDITORS: dict[str, Editor] = {
    "rome": Editor("rome", "ROME", rome.edit, ROMEHyperParams, batched=False, layer_window=False),
    "memit": Editor("memit", "MEMIT", memit.edit, MEMITHyperParams, batched=True, layer_window=True),
    "ft": Editor("ft", "FT", ft.edit, ft.FTHyperParams, batched=False, layer_window=False),
    "grace": Editor("grace", "GRACE", grace.edit, grace.GRACEHyperParams, batched=False, layer_window=False,
                    memory=True),
    "wise": Editor("wise", "WISE", wise.edit, wise.WISEHyperParams, batched=False, layer_window=False, memory=True),
    "factkey": Editor("factkey", "FactKey", factkey.edit, factkey.FactKeyHyperParams, batched=False,
                      layer_window=False, memory=True),
    "ultraedit": Editor("ultraedit", "UltraEdit", ultraedit.edit, ultraedit.UltraEditHyperParams, batched=True,
                        layer_window=True, lifelong=True),
}

#: the editors whose edits live in a side memory behind a router (one edit at a time, any number of them)
MEMORY_EDITORS = tuple(name for name, e in EDITORS.items() if e.memory)
#: the weight editors made for lifelong sequences (their sequential runs save one checkpoint, not every edit)
LIFELONG_EDITORS = tuple(name for name, e in EDITORS.items() if e.lifelong)


def get_editor(name: str) -> Editor:
    """The editor called ``name``, case-insensitive (``"rome"``, ``"ROME"``, ``"memit"``, ``"ft"``, ``"grace"``,
    ``"wise"``, ``"factkey"``, ``"ultraedit"``)."""
    key = str(name).lower()
    if key not in EDITORS:
        raise ValueError(f"unknown editing method {name!r}; valid: {', '.join(EDITORS)}")
    return EDITORS[key]
