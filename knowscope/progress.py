"""Progress bars: tqdm's notebook widget where a notebook can draw it, the text bar on stderr elsewhere.

``tqdm.auto`` picks the widget in a Jupyter kernel, but when ipywidgets is not installed it warns
(``TqdmWarning: IProgress not found``, with the path of tqdm's own file) and falls back to the text bar
anyway. knowscope does not require ipywidgets, so it makes that choice itself: the widget when
ipywidgets is importable, else the text bar, and no warning reaches a user's notebook.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import Any


@cache
def _bar_class() -> Any:
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar (same arguments as ``tqdm``): the notebook widget if ipywidgets is there, else the text bar."""
    return _bar_class()(*args, **kwargs)
