"""SafeEdit records: an adversarial prompt, a safe and an unsafe response, a knowledge constraint and
the four generalization inputs, read from and written to SafeEdit's JSON format.

SafeEdit's record (Wang et al., 2024, "Detoxifying Large Language Models via Knowledge Editing")::

    {"id": 0, "unsafety category": "offensiveness", "question": "...", "adversarial prompt": "...",
     "safe generation": "...", "unsafe generation": "...",
     "knowledge constrain": {"prompt": "...", "answer": "..."},
     "generalization test": {"test input of only harmful question": "...",
                             "test input of other attack prompt input": "...",
                             "test input of other question input": "...",
                             "test input of other questions and attack prompts": "..."}}

A malformed record raises :class:`SafetyFormatError` naming the record index and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from knowscope.facts import write_json_atomic

BUNDLED_SAFETY = "safety.json"

# SafeEdit's nine unsafe scenarios (the values of "unsafety category")
CATEGORIES = (
    "political sensitivity",
    "pornography",
    "ethics and morality",
    "illegal activities",
    "mental harm",
    "offensiveness",
    "physical harm",
    "privacy and property",
    "unfairness and discrimination",
)

# generalization inputs: metric name -> SafeEdit's key
GENERALIZATION_KEYS = {
    "DG_onlyQ": "test input of only harmful question",
    "DG_otherA": "test input of other attack prompt input",
    "DG_otherQ": "test input of other question input",
    "DG_otherAQ": "test input of other questions and attack prompts",
}


class SafetyFormatError(ValueError):
    """A SafeEdit file or record is malformed; the message names the record and the field."""


@dataclass
class SafetyItem:
    """One SafeEdit instance: the attack to defend against, the responses, and the held-out inputs.

    ``generalization`` maps the DG metric names (``DG_onlyQ``, ``DG_otherA``, ``DG_otherQ``,
    ``DG_otherAQ``) to their input texts.
    """

    id: int | str
    category: str
    question: str
    adversarial_prompt: str
    safe_generation: str
    unsafe_generation: str
    constraint_prompt: str
    constraint_answer: str
    generalization: dict[str, str]

    def __post_init__(self) -> None:
        where = f"safety item {self.id!r}"
        for name in ("question", "adversarial_prompt", "safe_generation", "unsafe_generation",
                     "constraint_prompt", "constraint_answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise SafetyFormatError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        missing = [k for k in GENERALIZATION_KEYS if not str(self.generalization.get(k, "")).strip()]
        if missing:
            raise SafetyFormatError(f"{where}: generalization test lacks {missing}")

    def inputs(self) -> dict[str, str]:
        """Every evaluated input by metric name: ``DS`` (the adversarial prompt) and the four ``DG_*``."""
        return {"DS": self.adversarial_prompt, **self.generalization}

    def to_safeedit(self) -> dict[str, Any]:
        """The record in SafeEdit's JSON shape."""
        return {
            "id": self.id,
            "unsafety category": self.category,
            "question": self.question,
            "adversarial prompt": self.adversarial_prompt,
            "safe generation": self.safe_generation,
            "unsafe generation": self.unsafe_generation,
            "knowledge constrain": {"prompt": self.constraint_prompt, "answer": self.constraint_answer},
            "generalization test": {GENERALIZATION_KEYS[k]: self.generalization[k] for k in GENERALIZATION_KEYS},
        }


def _field(record: dict[str, Any], key: str, where: str, kind: type = str) -> Any:
    if key not in record:
        raise SafetyFormatError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise SafetyFormatError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_safety(records: Any) -> list[SafetyItem]:
    """SafeEdit records (a list of dicts) → :class:`SafetyItem` list."""
    if not isinstance(records, list):
        raise SafetyFormatError(f"a SafeEdit file holds a JSON list of records, got {type(records).__name__}")
    items = []
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise SafetyFormatError(f"{where}: expected an object, got {type(rec).__name__}")
        kc = _field(rec, "knowledge constrain", where, dict)
        gt = _field(rec, "generalization test", where, dict)
        gen = {}
        for name, key in GENERALIZATION_KEYS.items():
            gen[name] = _field(gt, key, f"{where} 'generalization test'")
        items.append(SafetyItem(
            id=rec.get("id", i),
            category=str(rec.get("unsafety category", "")).strip().lower(),
            question=_field(rec, "question", where),
            adversarial_prompt=_field(rec, "adversarial prompt", where),
            safe_generation=_field(rec, "safe generation", where),
            unsafe_generation=_field(rec, "unsafe generation", where),
            constraint_prompt=_field(kc, "prompt", f"{where} 'knowledge constrain'"),
            constraint_answer=_field(kc, "answer", f"{where} 'knowledge constrain'"),
            generalization=gen,
        ))
    return items


def load_safety(path: str | os.PathLike[str]) -> list[SafetyItem]:
    """Read a SafeEdit JSON file (a list of records)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no SafeEdit file at {p}")
    try:
        records = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SafetyFormatError(f"{p} is not valid JSON: {e}") from e
    return parse_safety(records)


def save_safety(items: Iterable[SafetyItem], path: str | os.PathLike[str]) -> Path:
    """Write items in SafeEdit's JSON format (atomically)."""
    return write_json_atomic(path, [it.to_safeedit() for it in items])


def load_bundled_safety(category: str | None = None, limit: int | None = None) -> list[SafetyItem]:
    """The bundled SafeEdit-format set for the default model (``scripts/build_safety.py`` writes it)."""
    text = resources.files("knowscope.data").joinpath(BUNDLED_SAFETY).read_text(encoding="utf-8")
    items = parse_safety(json.loads(text))
    if category is not None:
        if category.lower() not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; choose one of {list(CATEGORIES)}")
        items = [it for it in items if it.category == category.lower()]
    return items[:limit] if limit is not None else items
