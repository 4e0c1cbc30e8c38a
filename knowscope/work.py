"""Long work counted in units: a time estimate, progress, and cancellation between units.

The long computations a user waits on (a knowledge circuit: one gradient pass per integrated-gradient
step, then one patched run per circuit size; a tuned lens: one optimiser step at a time; DINM: one
optimiser step at a time) take an ``on_unit(done, total)`` callback that they call after each unit.
:class:`Work` is such a callback: it times the units, estimates the time left from the units
measured so far, reports progress to ``report`` and raises :class:`Cancelled` between two units once
``stop()`` says so. Each of those loops leaves the model as it found it when the callback raises
(weights restored, hooks removed), so a cancelled computation leaves no half state behind.

Before any unit has run, :func:`estimate_seconds` scales a per-unit cost measured earlier (a previous
run, or a benchmark's figure) by the number of units.

The bottom of the package (no knowscope imports).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

OnUnit = Callable[[int, int], None]


class Cancelled(Exception):
    """The user stopped the work between two units (nothing of it was kept)."""


def estimate_seconds(per_unit: float | None, units: int, fixed: float = 0.0) -> float | None:
    """``fixed + per_unit * units`` (``None`` when no per-unit cost is known yet)."""
    if per_unit is None or per_unit < 0 or units < 0:
        return None
    return float(fixed) + float(per_unit) * int(units)


def format_seconds(seconds: float | None) -> str:
    """``"about 40 s"``, ``"about 3 min"``, ``"unknown"``: a duration for a person."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


@dataclass
class Work:
    """An ``on_unit(done, total)`` callback that measures, reports and cancels (see the module docstring).

    ``report(work)`` is called after every unit (progress bars read :attr:`done`, :attr:`total`,
    :meth:`remaining_seconds`); ``stop()`` is asked after every unit and, when it says ``True``,
    :class:`Cancelled` is raised there. ``clock`` is injectable for tests.
    """

    total: int = 0
    report: Callable[[Work], None] | None = None
    stop: Callable[[], bool] | None = None
    clock: Callable[[], float] = time.perf_counter
    done: int = 0
    started: float = field(default=0.0)
    unit_seconds: list[float] = field(default_factory=list)
    _last: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.started = self._last = self.clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        step = max(0, int(done) - self.done)
        if step:
            self.unit_seconds.extend([(now - self._last) / step] * step)
        self._last, self.done, self.total = now, int(done), int(total)
        if self.report is not None:
            self.report(self)
        if self.stop is not None and self.stop():
            raise Cancelled(f"stopped after {self.done} of {self.total} units")

    @property
    def seconds_per_unit(self) -> float | None:
        """The mean measured seconds per unit (``None`` before the first unit)."""
        return sum(self.unit_seconds) / len(self.unit_seconds) if self.unit_seconds else None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining_seconds(self) -> float | None:
        """The units left times the measured seconds per unit (``None`` before the first unit)."""
        return estimate_seconds(self.seconds_per_unit, max(0, self.total - self.done))

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0
