"""What every page of the viewer shares: its settings, the shared model, error display, saving.

The viewer's settings come from the environment (``knowscope view`` sets them, tests set them
too): ``KNOWSCOPE_RUNS`` (the runs folder, default ``runs``) and ``KNOWSCOPE_MODEL`` (the model to
load for live computations, default the embedded SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from knowscope.viewer.lab import ModelLab, friendly
from knowscope.viewer.runs import RunInfo, scan_runs

logger = logging.getLogger("knowscope.viewer")

ENV_RUNS = "KNOWSCOPE_RUNS"
ENV_MODEL = "KNOWSCOPE_MODEL"
EDITS = "edit_lab_edits"  # this tab's applied edits (the edit lab adds them; the Runs page can load saved ones)
STATE = "model_state"  # the sidebar's switch: "edited" or "unedited"


@dataclass(frozen=True)
class ViewerConfig:
    runs_dir: Path
    model_name: str | None

    @classmethod
    def from_env(cls) -> ViewerConfig:
        return cls(runs_dir=Path(os.environ.get(ENV_RUNS) or "runs"), model_name=os.environ.get(ENV_MODEL) or None)

    @property
    def model_label(self) -> str:
        return self.model_name or "smollm2-135m (default)"


@st.cache_resource(show_spinner="Loading the model (once per viewer) ...")
def get_lab(model_name: str | None) -> ModelLab:
    """The model every tab shares (loaded once per viewer process)."""
    from knowscope.models import load_model

    return ModelLab(load_model(model_name))


def lab(cfg: ViewerConfig) -> ModelLab:
    return get_lab(cfg.model_name)


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Show any failure of the block as a message on the page (the traceback goes to the log)."""
    try:
        yield
    except Exception as exc:
        logger.exception("viewer: %s failed", what)
        st.error(f"{what} failed. {friendly(exc)}")


def runs(cfg: ViewerConfig, kinds: tuple[str, ...] | None = None) -> list[RunInfo]:
    """The saved runs (of ``kinds``), or none when the runs folder does not exist yet."""
    if not cfg.runs_dir.is_dir():
        return []
    found = scan_runs(cfg.runs_dir)
    return [r for r in found if kinds is None or r.kind in kinds]


def run_label(r: RunInfo) -> str:
    return f"{r.group}/{r.name}  [{r.kind}]  {r.headline}"[:160]


def pick_run(cfg: ViewerConfig, kinds: tuple[str, ...], key: str, label: str) -> RunInfo | None:
    """A selectbox of saved runs of ``kinds``; ``None`` (with a note) when there are none."""
    found = runs(cfg, kinds)
    if not found:
        st.info(f"No saved {' / '.join(kinds)} runs under `{cfg.runs_dir}` yet.")
        return None
    return st.selectbox(label, found, format_func=run_label, key=key)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "run"


def save_target(cfg: ViewerConfig, name: str) -> Path:
    """A fresh folder under the runs folder for a result saved from the page."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return cfg.runs_dir / "viewer" / f"{stamp}-{slug(name)}"


def bundled_facts() -> list[Any]:
    from knowscope.facts import load_bundled_facts

    return load_bundled_facts()


def fact_label(f: Any) -> str:
    return f"{f.subject}: {f.text} -> {f.target_true}  (edit to {f.target_new})"


# ---------------------------------------------------------------------------------------------
# one model state across pages


def tab_edits() -> list[Any]:
    """This tab's edits (in the order applied), whatever the switch says."""
    return list(st.session_state.get(EDITS, []))


def active_edits() -> list[Any]:
    """The edits every page applies to the model it reads: this tab's edits when the sidebar's switch
    says "edited", none when it says "unedited" (or there are none)."""
    edits = tab_edits()
    return edits if edits and st.session_state.get(STATE, "edited") == "edited" else []


def model_state_switch() -> None:
    """The sidebar's "edited / unedited" switch (shown on every page while this tab has edits)."""
    if st.session_state.pop(f"{STATE}_to_edited", False):  # edits were just loaded: read them
        st.session_state[STATE] = "edited"
    edits = tab_edits()
    if not edits:
        st.sidebar.caption("model state: **unedited** (no edits in this tab; apply one in the Edit lab or load a "
                           "saved one from Runs)")
        return
    st.sidebar.radio("Model the pages read", ["edited", "unedited"], key=STATE, horizontal=True,
                     help="edited: the trace, circuit, lens pages read the model with this tab's edits applied")
    st.sidebar.caption("edits in this tab:  \n" + "  \n".join(f"{i + 1}. {edit_summary(e)}"
                                                               for i, e in enumerate(edits)))


def use_edits(edits: list[Any]) -> None:
    """Make ``edits`` this tab's edits (a saved run's), read by every page from the next run on."""
    st.session_state[EDITS] = list(edits)
    st.session_state[f"{STATE}_to_edited"] = True


def state_label(edits: list[Any]) -> str:
    """``"unedited"`` or ``"edited (ROME at layer 5: ...)"``, for captions of what a page computed on."""
    return "unedited" if not edits else "edited (" + "; ".join(edit_summary(e) for e in edits) + ")"


def edit_summary(e: Any) -> str:
    """An edit in one readable line: method, layers and what it changes (never a Python repr)."""
    layers = list(e.layers)
    where = ("" if not layers else f" at layer {layers[0]}" if len(layers) == 1
             else f" at layers {layers[0]}-{layers[-1]}")
    parts = []
    for r in e.requests:
        rw = r.get("requested_rewrite", r)
        subject = rw.get("subject")

        def text(v: Any) -> str:
            return str(v.get("str", "")) if isinstance(v, dict) else str(v or "")

        if subject:
            parts.append(f"{subject}: {text(rw.get('target_true')) or '?'} → {text(rw.get('target_new'))}")
        elif r.get("question"):
            parts.append(f"safety item {r.get('id', '')}: {str(r['question'])[:50]}")
    shown = "; ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")
    return f"{str(e.method).upper()}{where}" + (f": {shown}" if shown else "")


class Progress:
    """A progress bar with a caption of the current step, for multi-step computations."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.bar = st.progress(0.0, text=f"{steps[0]} ...")
        self.i = 0

    def next(self, detail: str = "") -> None:
        self.i += 1
        if self.i < len(self.steps):
            self.bar.progress(self.i / len(self.steps), text=f"{self.steps[self.i]} ... {detail}".strip())

    def done(self, text: str) -> None:
        self.bar.progress(1.0, text=text)

    def close(self) -> None:
        """Remove the bar (a step failed: the error below says why; a frozen bar would not)."""
        self.bar.empty()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None:
            self.close()
        return False
