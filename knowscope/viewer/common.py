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


# ---------------------------------------------------------------------------------------------
# long work: an estimate before, progress during, a Cancel button

#: seconds per unit on the default model (2-core CPU) from the benchmarks, until this viewer measures its own:
#: circuit: benchmarks/results/bench_circuits.json, EAP-IG attribution of one prompt, 2.1 s for 5 gradient passes;
#: tuned lens: bench_probes.json, 570 s for 300 steps of 64 tokens; DINM: bench_detox.json, 5.7 s for 10 steps
BENCHMARK_PER_UNIT = {"circuit": 0.42, "tuned_lens": 1.9, "dinm": 0.57}


@st.cache_resource
def unit_costs() -> dict[str, float]:
    """Seconds per unit measured by this viewer process's last finished run of each job (per unit of ``scale``)."""
    return {}


class LongWork:
    """Work counted in units, run from a page: an estimate before it starts, a progress bar with the time
    left while it runs, and a Cancel button.

    Cancel works between units: clicking it makes Streamlit stop the running script at the progress bar's
    next update (its rerun), or, when the script is not interrupted, the button's flag makes the work raise
    :class:`~knowscope.work.Cancelled` there. Either way the computation unwinds through
    :meth:`ModelLab.use` (the shared model is rolled back) and nothing of it is stored: a page writes its
    results inside the ``with job.run() as work`` block only.
    """

    def __init__(self, key: str, job: str, label: str, unit: str = "units", scale: float = 1.0) -> None:
        self.key, self.job, self.label, self.unit, self.scale = key, job, label, unit, scale
        self.flag = f"{key}:cancel"

    def cancelled_notice(self) -> None:
        """Say so when the last run of this job was cancelled (call it where the page shows results)."""
        if st.session_state.pop(self.flag, False):
            st.warning(f"{self.label} cancelled: nothing of it was kept; the model and this page are as before.")

    def per_unit(self) -> tuple[float | None, str]:
        measured = unit_costs().get(self.job)
        if measured is not None:
            return measured * self.scale, "measured on this viewer's last run"
        prior = BENCHMARK_PER_UNIT.get(self.job)
        return (None if prior is None else prior * self.scale), "from the benchmarks on the default model, 2-core CPU"

    def estimate(self, units: int, extra: str = "") -> None:
        """A caption: the estimated time of ``units`` units, and where the per-unit cost comes from."""
        from knowscope.work import estimate_seconds, format_seconds

        per, source = self.per_unit()
        secs = estimate_seconds(per, units)
        how = f"{units} {self.unit} × {per:.2f} s, {source}" if per is not None else f"{units} {self.unit}"
        st.caption(f"Estimated time: {format_seconds(secs)} ({how}){extra}; it can be cancelled while it runs.")

    @contextlib.contextmanager
    def run(self) -> Iterator[Any]:
        """The :class:`~knowscope.work.Work` to pass as ``on_unit``; a cancel ends the block (nothing kept)."""
        from knowscope.work import Cancelled, Work, format_seconds

        st.session_state[self.flag] = False
        button = st.empty()
        button.button(f"Cancel: stop the {self.label.lower()}", key=f"{self.key}_cancel",
                      on_click=lambda: st.session_state.__setitem__(self.flag, True))
        bar = st.progress(0.0, text=f"{self.label} ...")

        def report(w: Work) -> None:
            left = w.remaining_seconds()
            bar.progress(w.fraction, text=f"{self.label}: {w.done} of {w.total} {self.unit}"
                         + (f", {format_seconds(left)} left" if left is not None and w.done < w.total else ""))

        work = Work(report=report, stop=lambda: bool(st.session_state.get(self.flag)))
        try:
            yield work
        except Cancelled:
            self.cancelled_notice()
        finally:
            button.empty()
            bar.empty()
            if work.seconds_per_unit is not None and work.done >= work.total > 0:
                unit_costs()[self.job] = work.seconds_per_unit / max(self.scale, 1e-9)
