"""Kept importable: :class:`EditResult` and :class:`EditSession` live in :mod:`knowscope.editing.session`."""

from knowscope.editing.session import MAX_RELATIVE_DELTA, EditMismatchError, EditResult, EditSession  # noqa: F401
