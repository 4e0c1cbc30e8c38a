"""Context templates, prompt tokens and the MLP keys k* — the inputs ROME and MEMIT share.

* :func:`context_templates` — ``"{}"`` plus short random prefixes sampled by the model from its BOS
  (ROME's trick for a key that holds in any context), seeded and cached on disk.
* :func:`prompt_ids` / :func:`pad` — prompts tokenized with knowscope's convention (BOS first) by
  concatenating token ids, so the target tokens and the subject position are exact and independent
  of tokenizer merges at the seams.
* :func:`compute_keys` — the MLP key at the subject's last token, averaged over those templates;
  :func:`capture` — any hook's activation at chosen positions, in batched forwards;
* :func:`check_request` / :func:`facts_meta` — an edit request checked, and recorded in a result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.session import unedited_weights
from knowscope.facts import Fact
from knowscope.models import Model, cache_dir
from knowscope.texts import bos_id, hash_seed

_TEMPLATE_MEMORY: dict[tuple[str, tuple[tuple[int, int], ...], int], list[str]] = {}


# ------------------------------------------------------------------------------------------------
# context templates


def context_templates(model: Model, lengths: Sequence[Sequence[int]] = ((10, 5),), seed: int = 0) -> list[str]:
    """``["{}"]`` plus ``n`` prefixes of ``length`` tokens sampled from BOS for each ``(length, n)``.

    Sampling is top-5 (as ROME's prefixes), seeded; the list is cached in memory and on disk by
    model fingerprint, lengths and seed. Braces in generated text are replaced by spaces so the
    templates stay valid format strings.
    """
    key = (model.fingerprint, tuple((int(a), int(b)) for a, b in lengths), int(seed))
    if key in _TEMPLATE_MEMORY:
        return list(_TEMPLATE_MEMORY[key])
    tag = "-".join(f"{a}x{b}" for a, b in key[1]) or "none"
    path = cache_dir() / "editing" / model.fingerprint / f"templates-{tag}-s{seed}.json"
    if path.is_file():
        templates = json.loads(path.read_text())
    else:
        templates = ["{}"]
        bos = bos_id(model)
        for length, n in key[1]:
            if length < 1 or n < 1:
                raise ValueError(f"context length and count must be >= 1, got ({length}, {n})")
            start = torch.full((n, 1), bos, dtype=torch.long, device=model.device)
            with torch.no_grad(), unedited_weights(model), \
                    torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
                torch.manual_seed(hash_seed("templates", seed, length, n))
                out = model.generate(
                    start, do_sample=True, top_k=5,
                    max_new_tokens=length, min_new_tokens=length,
                )
            for row in out[:, 1:]:
                text = model.tokenizer.decode(row, skip_special_tokens=True)
                text = text.replace("{", " ").replace("}", " ")
                templates.append(text + ". {}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(templates))
        os.replace(tmp, path)
    _TEMPLATE_MEMORY[key] = list(templates)
    return list(templates)


# ------------------------------------------------------------------------------------------------
# tokenization helpers


def encode(model: Model, text: str) -> list[int]:
    return list(model.tokenizer.encode(text, add_special_tokens=False))


def prompt_ids(model: Model, template: str, subject: str) -> tuple[list[int], int]:
    """Token ids (BOS first) of ``template.format(subject)`` and the index of the subject's last token.

    The text up to the end of the subject and the rest are tokenized separately and concatenated,
    so the subject's last token is found exactly even where merges would cross the seam.
    """
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the subject")
    if not subject or not subject.strip():
        raise ValueError(f"subject {subject!r} is empty")
    head, tail = template.split("{}")
    left = encode(model, head + subject)
    if not left:
        raise ValueError(f"subject {subject!r} tokenizes to nothing")
    ids = [bos_id(model)] + left + (encode(model, tail) if tail else [])
    return ids, len(left)  # index len(left) is the subject's last token (BOS at 0)


def pad(model: Model, rows: Sequence[Sequence[int]]) -> Tensor:
    """Right-pad token rows into one tensor (causal attention: padding never affects real positions)."""
    width = max(len(r) for r in rows)
    fill = bos_id(model)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(model.device)


def check_request(model: Model, fact: Fact) -> None:
    """Refuse a request that is not a Fact, whose new target is empty, or whose new target is the true one
    (an edit that changes nothing; compared as the tokens the model is scored on)."""
    if not isinstance(fact, Fact):
        raise ValueError(f"edit requests must be knowscope.facts.Fact records, got {type(fact).__name__}")
    new = model.encode_target(fact.new_continuation)
    if new == model.tokenizer.encode(fact.true_continuation, add_special_tokens=False):
        raise ValueError(f"edit request {fact.text!r} (subject {fact.subject!r}): the new target {fact.target_new!r} "
                         f"is the true one ({fact.target_true!r}); an edit must change the answer")


# ------------------------------------------------------------------------------------------------
# keys and values


def template_group_weights(lengths: Sequence[Sequence[int]]) -> Float[Tensor, " n_templates"]:
    """Weights of :func:`context_templates`' templates when each group counts equally (MEMIT).

    The templates form groups: the plain ``"{}"``, then ``n`` prefixes per ``(length, n)`` entry.
    MEMIT's ``compute_ks`` averages the keys within each group and then over the groups, so with
    the default ``((10, 5),)`` the plain prompt weighs 1/2 and each prefixed one 1/10.
    """
    sizes = [1] + [int(n) for _, n in lengths]
    return torch.cat([torch.full((size,), 1.0 / (len(sizes) * size), dtype=torch.float64) for size in sizes])


@torch.no_grad()
def compute_keys(
    model: Model, layer: int, requests: Sequence[Fact], templates: Sequence[str],
    weights: Float[Tensor, " n_templates"] | None = None,
) -> Float[Tensor, "n_requests d_mlp"]:
    """MLP key (input of the output projection) at each subject's last token, averaged over templates.

    ``weights=None`` averages uniformly over the templates (ROME's ``compute_u``); MEMIT passes
    :func:`template_group_weights` (its ``compute_ks``).
    """
    keys = template_keys(model, layer, requests, templates)
    if weights is None:
        return keys.mean(1)
    if weights.shape != (len(templates),):
        raise ValueError(f"{weights.shape[0]} template weights for {len(templates)} templates")
    w = (weights / weights.sum()).to(device=keys.device, dtype=torch.float64)
    return torch.einsum("rtd,t->rd", keys.double(), w).to(keys.dtype)


@torch.no_grad()
def template_keys(
    model: Model, layer: int, requests: Sequence[Fact], templates: Sequence[str]
) -> Float[Tensor, "n_requests n_templates d_mlp"]:
    """MLP key at each subject's last token in each template (not averaged)."""
    rows: list[list[int]] = []
    idx: list[int] = []
    for fact in requests:
        for t in templates:
            ids, i = prompt_ids(model, t.format(fact.prompt), fact.subject)
            rows.append(ids)
            idx.append(i)
    keys = capture(model, model.arch.hook_mlp_key(layer), rows, idx)
    return keys.reshape(len(requests), len(templates), -1)


@torch.no_grad()
def capture(model: Model, hook_name: str, rows: Sequence[Sequence[int]], idx: Sequence[int],
            batch_size: int = 64) -> Float[Tensor, "n d"]:
    """Activation at ``hook_name`` at position ``idx[i]`` of token row ``i`` (batched forwards)."""
    out: list[Tensor] = []
    layer = int(hook_name.split(".")[1]) if hook_name.startswith("blocks.") else model.arch.n_layers - 1
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pos = torch.tensor(idx[start : start + batch_size], device=model.device)
        got: dict[str, Tensor] = {}

        def hook(act: Tensor, hook: Any, got: dict[str, Tensor] = got, pos: Tensor = pos) -> Tensor:
            got["a"] = act[torch.arange(act.shape[0], device=act.device), pos].detach().float()
            return act

        stop = layer + 1 if layer + 1 < model.arch.n_layers else None
        model.bridge.run_with_hooks(pad(model, chunk), fwd_hooks=[(hook_name, hook)], return_type=None,
                                    stop_at_layer=stop)
        out.append(got["a"])
    return torch.cat(out)


def facts_meta(requests: Sequence[Fact]) -> list[dict[str, Any]]:
    return [{"case_id": f.case_id, "subject": f.subject, "prompt": f.prompt, "relation_id": f.relation_id,
             "target_true": f.target_true, "target_new": f.target_new} for f in requests]
