"""Prompt → token ids for safety work, and greedy responses.

Safety inputs are user turns, so an instruct model sees them through its own chat template (as
SafeEdit feeds chat models); a model without a chat template sees ``BOS + prompt + "\\n"``. The
response tokens are appended after the template's assistant header, tokenized on their own, so
the boundary between input and response is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from knowscope.models import Model


def uses_chat_template(model: Model) -> bool:
    return bool(getattr(model.tokenizer, "chat_template", None))


def input_ids(model: Model, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of a user ``prompt`` ready for the assistant's answer (BOS/template included)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    chat = uses_chat_template(model) if chat is None else chat
    tok = model.tokenizer
    if chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True)
        if not isinstance(ids, list):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    bos = model.to_tokens("")[0].tolist()
    return bos + list(tok.encode(prompt + "\n", add_special_tokens=False))


def pair_ids(model: Model, prompt: str, response: str, chat: bool | None = None) -> tuple[list[int], list[int]]:
    """(input ids, response ids): the response tokenized on its own, ending with EOS when the model has one."""
    resp = list(model.tokenizer.encode(response, add_special_tokens=False))
    if not resp:
        raise ValueError(f"response {response!r} tokenizes to nothing")
    return input_ids(model, prompt, chat), resp


def left_pad(model: Model, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Left-padded ids and attention mask (for generation)."""
    width = max(len(r) for r in rows)
    pad_id = model.pad_token_id
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(model.device), mask.to(model.device)


@torch.no_grad()
def respond(model: Model, prompts: Sequence[str], max_new_tokens: int = 48, batch_size: int = 8,
            chat: bool | None = None) -> list[str]:
    """Greedy responses to user prompts (batched, left-padded; special tokens stripped)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out: list[str] = []
    tok = model.tokenizer
    pad_id = model.pad_token_id
    for start in range(0, len(prompts), batch_size):
        rows = [input_ids(model, p, chat) for p in prompts[start : start + batch_size]]
        ids, mask = left_pad(model, rows)
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad_id)
        for row in gen[:, ids.shape[1]:]:
            out.append(tok.decode(row, skip_special_tokens=True).strip())
    return out
