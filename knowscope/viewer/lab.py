"""The model the viewer's tabs share, and how a page uses it without leaving it edited.

Streamlit runs each browser tab's script in its own thread, and every tab shares one loaded model
(loading it per tab would cost seconds and memory). :class:`ModelLab` keeps that model *unedited
between requests*: a page works on it inside :meth:`ModelLab.use`, which takes the lock, applies
the tab's own edits, runs the page's computation, and rolls the weights back bit for bit (also
when the computation fails). A tab's edits therefore live in that tab (a list of
:class:`~knowscope.editing.EditResult`), never in the shared weights, and two tabs cannot see, undo or
half-apply each other's edits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from knowscope.editing import EditMismatchError, EditResult, EditSession

logger = logging.getLogger(__name__)


class ModelLab:
    """One model behind a lock, with an :class:`EditSession` that is empty outside :meth:`use`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.session = EditSession(model)
        self._owner: int | None = None

    @contextlib.contextmanager
    def use(self, edits: Sequence[EditResult] = ()) -> Iterator[tuple[Any, EditSession]]:
        """The model with ``edits`` applied (in order), for the duration of a ``with`` block.

        Yields ``(model, session)``; edits applied to ``session`` inside the block are rolled back
        with the others when it ends, whatever happens inside.
        """
        if self._owner == threading.get_ident():
            raise RuntimeError("ModelLab.use() is not re-entrant: the inner block would roll back the outer one")
        with self.lock:
            self._owner = threading.get_ident()
            try:
                if self.session.history:  # never expected: every block ends rolled back
                    logger.warning("model lab found %d edits left applied; rolling back", len(self.session.history))
                    self.session.rollback()
                for e in edits:
                    self.session.apply(e)
                yield self.model, self.session
            finally:
                self.session.rollback()
                self._owner = None


# ---------------------------------------------------------------------------------------------
# errors as messages


def friendly(exc: BaseException) -> str:
    """What went wrong and what to change, in one or two sentences (never a traceback)."""
    from knowscope.facts import FactFormatError
    from knowscope.models import ModelLoadError
    from knowscope.results import ResultFormatError

    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ModelLoadError):
        return f"The model could not be loaded: {msg}. Start the viewer with another --model."
    if isinstance(exc, EditMismatchError):
        if "fingerprint" in msg:  # made on another model: only that model can carry it
            return f"This edit does not fit the loaded model: {msg}. Open the viewer with that edit's model (--model)."
        return f"This edit cannot be applied here: {msg}."
    if isinstance(exc, ResultFormatError):
        return f"Cannot open this run: {msg}."
    if isinstance(exc, FactFormatError):
        return f"The fact is malformed: {msg}."
    if isinstance(exc, FileNotFoundError):
        return f"File not found: {msg}. Check the path."
    if isinstance(exc, (ValueError, KeyError, IndexError)):
        return f"{msg}. Change the inputs above and try again."
    if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
        return "Out of memory: try fewer facts, samples or tokens."
    return f"Unexpected {type(exc).__name__}: {msg}. The full traceback is in the viewer's log."
