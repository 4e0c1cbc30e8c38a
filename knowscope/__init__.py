"""knowscope: locate knowledge inside a language model and edit it."""

from knowscope import progress as _progress  # noqa: F401 - first: tqdm.auto imported quietly (see progress.py)
from knowscope.facts import Fact, load_bundled_facts, load_facts
from knowscope.models import ArchInfo, Model, load_model, tiny_model

__version__ = "0.1.0"
__all__ = ["ArchInfo", "Fact", "Model", "load_bundled_facts", "load_facts", "load_model", "tiny_model"]
