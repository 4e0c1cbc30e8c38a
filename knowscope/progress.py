"""Progress bars: tqdm's notebook widget where a notebook can draw it, the text bar on stderr elsewhere.

``tqdm.auto`` picks the widget in a Jupyter kernel, but when ipywidgets is not installed it warns once,
on its first import (``TqdmWarning: IProgress not found``, naming the path of tqdm's own file), and falls
back to the text bar anyway. huggingface_hub imports it as soon as a model loads, so every notebook
without ipywidgets would start with that warning. knowscope does not require ipywidgets: this module,
imported first by ``import knowscope``, imports ``tqdm.auto`` with that one warning silenced, and every
bar of knowscope's goes through :func:`progress_bar`.
"""

from __future__ import annotations

import warnings
from typing import Any

from tqdm.std import TqdmWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*IProgress not found.*", category=TqdmWarning)
    from tqdm.auto import tqdm as _tqdm


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm``'s arguments): the notebook widget where ipywidgets can draw it, else the text bar."""
    return _tqdm(*args, **kwargs)
