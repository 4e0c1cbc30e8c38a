"""The :class:`Model` wrapper: a TransformerBridge with knowscope's conventions (BOS, no silent
truncation, generation through the measured KV-cache convention, the weight fingerprint)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from knowscope.compat import detect as detect_compat
from knowscope.models.arch import _describe, clean_param_name
from knowscope.paths import cache_dir

logger = logging.getLogger(__name__)


class Model:
    """A TransformerBridge with knowscope's conventions attached.

    Attributes: ``bridge`` (TransformerBridge), ``hf`` (the HF model whose weights the bridge
    runs), ``tokenizer``, ``arch`` (:class:`ArchInfo`), ``name``, ``path`` (the local directory it
    was booted from) and ``fingerprint`` (hash of the config and every weight byte, taken at load time,
    so it names the *base* model even after in-place edits). Unknown attributes fall through to the
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

    def subject_span(self, prompt: str, subject: str) -> tuple[int, int]:
        """Half-open token range ``[start, end)`` of ``subject`` in the BOS-prepended ``prompt``.

        The one subject-span rule of knowscope (causal tracing, circuits and roles all use it):
        ``prompt`` is either a template with one ``{}`` for the subject or a text containing the
        subject (its first occurrence counts). A token belongs to the subject when its characters
        overlap the subject's characters (the tokenizer's offset mapping), so a leading space that
        the tokenizer merges into the subject's first token ("The| Eiffel") and a merge across the
        subject's end are both covered, as in ROME's ``find_token_range``. Raises ``ValueError``
        for an empty subject or prompt, a subject not in the prompt, or a template with more than
        one ``{}``.
        """
        if not isinstance(subject, str) or not subject.strip():
            raise ValueError(f"subject {subject!r} is empty")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {prompt!r} is empty")
        if "{}" in prompt:
            if prompt.count("{}") != 1:
                raise ValueError(f"prompt template {prompt!r} must contain exactly one '{{}}' for the subject")
            start_char = prompt.index("{}")
            text = prompt.replace("{}", subject)
        else:
            start_char = prompt.find(subject)
            if start_char < 0:
                raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
            text = prompt
        end_char = start_char + len(subject)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{self.name}'s tokenizer gives no character offsets (not a fast tokenizer); "
                             "subject positions cannot be found")
        offsets = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        hits = [i for i, (a, b) in enumerate(offsets) if a < end_char and b > start_char]
        if not hits:
            raise ValueError(f"subject {subject!r} covers no token of {text!r}")
        bos = int(self.to_tokens(text).shape[1]) - len(offsets)  # 1 with BOS prepended, 0 without
        return hits[0] + bos, hits[-1] + 1 + bos

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


def compute_fingerprint(model: Model) -> str:
    """A short hash of the config and *every byte* of every parameter; names a base model for caches.

    BLAKE2b streams over each parameter's bytes as stored (no copy for contiguous CPU tensors):
    about half a second for the default model's 135M parameters on a 2-core CPU. Any changed
    weight changes it; the same weights give the same fingerprint on every load.
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
