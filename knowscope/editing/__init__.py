"""knowscope.editing: the "edit" side (ROME, MEMIT, fine-tuning baseline, DINM) and edit sessions."""

from knowscope.editing.session import EditMismatchError, EditResult, EditSession

__all__ = ["EditMismatchError", "EditResult", "EditSession"]
