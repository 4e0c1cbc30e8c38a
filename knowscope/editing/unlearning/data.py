"""Forget / retain sets for unlearning, in KnowUnDo's JSON layout.

An unlearning request is two lists of (prompt, answer) items: the **forget** set (knowledge the model
must stop giving) and the **retain** set (knowledge it must keep, chosen close to the forget set so the
boundary is tight: the same subject's other facts, the same relation's other subjects). Unlike a
CounterFact edit there is no new target, so an item is a prompt and the answer it now gives.

KnowUnDo (Tian et al., 2024) stores each split (``unlearn``, ``retention``) as a JSON list whose first
element holds ``{"train": [...], "val": [...]}``; an item has ``text`` (the question) and ``labels`` (the
answer, a string or a list of strings). :func:`load_unlearn_set` reads that layout (one split per file,
or both in one object ``{"unlearn": ..., "retention": ...}``) and knowscope's own bundled file, which is
the same layout with a few extra fields per item (``subject``, ``relation_id``, ``kind``, ``paraphrases``).
``train`` and ``val`` are the two halves a benchmark tunes on and reports on.

Bad input is refused with one line: an empty forget set, an item without a prompt or an answer, a retain
item whose prompt is also a forget prompt (the two sets would pull the same prompt both ways).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from knowscope.facts import write_json_atomic

#: the bundled set (scripts/build_unlearn.py) in knowscope/data/
BUNDLED_UNLEARN = "unlearn.json"
SPLITS = ("train", "val", "all")


class UnlearnFormatError(ValueError):
    """A forget / retain file or set is malformed; the message names the item and the field."""


@dataclass(frozen=True)
class UnlearnItem:
    """One prompt and the answer the model gives to it (to forget, or to keep).

    ``kind`` says where the item comes from: ``"fact"`` (a forget fact), ``"relation_specificity"`` (the
    same subject under another relation), ``"neighborhood"`` (the same relation, another subject) or
    ``"knowundo"`` (read from a KnowUnDo file). ``paraphrases`` are other wordings of a forget item's
    prompt, scored but never trained on.
    """

    prompt: str
    answer: str
    subject: str = ""
    relation_id: str = ""
    kind: str = "fact"
    paraphrases: tuple[str, ...] = ()

    @property
    def continuation(self) -> str:
        """The answer as scored after the prompt: one leading space (the project's convention)."""
        return self.answer if self.answer.startswith(" ") else " " + self.answer

    def to_knowundo(self) -> dict[str, Any]:
        d = asdict(self)
        out: dict[str, Any] = {"text": d.pop("prompt"), "labels": d.pop("answer")}
        out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v})
        return out

    @classmethod
    def from_record(cls, record: Any, where: str) -> UnlearnItem:
        """An item from a KnowUnDo record (``text`` / ``labels``) or ``prompt`` / ``answer``."""
        if not isinstance(record, dict):
            raise UnlearnFormatError(f"{where}: expected an object with 'text' and 'labels', "
                                     f"got {type(record).__name__}")
        prompt = record.get("text", record.get("prompt"))
        answer = record.get("labels", record.get("answer"))
        if isinstance(answer, list):
            answer = answer[0] if answer else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise UnlearnFormatError(f"{where}: field 'text' must be a non-empty string, got {prompt!r}")
        if not isinstance(answer, str) or not answer.strip():
            raise UnlearnFormatError(f"{where}: field 'labels' must be a non-empty string (or list of strings), "
                                     f"got {answer!r}")
        paraphrases = record.get("paraphrases", [])
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise UnlearnFormatError(f"{where}: field 'paraphrases' must be a list of non-empty strings")
        return cls(prompt=prompt, answer=answer, subject=str(record.get("subject", "")),
                   relation_id=str(record.get("relation_id", "")), kind=str(record.get("kind", "knowundo")),
                   paraphrases=tuple(paraphrases))


def _key(prompt: str) -> str:
    return " ".join(prompt.split()).lower()


@dataclass
class UnlearnSet:
    """A forget set and a retain set (checked: a non-empty forget set, no prompt in both)."""

    forget: list[UnlearnItem]
    retain: list[UnlearnItem] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.forget = list(self.forget)
        self.retain = list(self.retain)
        check_sets(self.forget, self.retain)

    def to_knowundo(self, split: str = "train") -> dict[str, Any]:
        """Both sets in KnowUnDo's layout, as the ``split`` half (``val`` empty for ``train`` and back)."""
        other = "val" if split == "train" else "train"
        return {"unlearn": [{split: [i.to_knowundo() for i in self.forget], other: []}],
                "retention": [{split: [i.to_knowundo() for i in self.retain], other: []}]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set as a KnowUnDo-layout JSON file (atomically)."""
        return write_json_atomic(path, self.to_knowundo())

    def summary(self) -> str:
        return f"{len(self.forget)} forget items, {len(self.retain)} retain items"


def check_sets(forget: Sequence[UnlearnItem], retain: Sequence[UnlearnItem]) -> None:
    """Refuse an empty forget set and a retain set that overlaps the forget set (one clear line each)."""
    if not forget:
        raise UnlearnFormatError("the forget set is empty: give at least one item to forget")
    for name, items in (("forget", forget), ("retain", retain)):
        for i, item in enumerate(items):
            if not isinstance(item, UnlearnItem):
                raise UnlearnFormatError(f"{name}[{i}] must be an UnlearnItem, got {type(item).__name__}")
    forget_prompts = {_key(p): i for i, f in enumerate(forget) for p in (f.prompt, *f.paraphrases)}
    for j, r in enumerate(retain):
        if _key(r.prompt) in forget_prompts:
            i = forget_prompts[_key(r.prompt)]
            raise UnlearnFormatError(
                f"the retain set overlaps the forget set: retain[{j}] {r.prompt!r} is also forget[{i}]'s prompt; "
                "an item cannot be both forgotten and kept")


def _split_items(value: Any, split: str, where: str) -> list[Any]:
    """The records of one KnowUnDo split value: ``[{"train": [...], "val": [...]}]``, that object bare, or
    a plain list of records."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and \
            ({"train", "val"} & set(value[0])):
        value = value[0]
    if isinstance(value, dict):
        if not ({"train", "val"} & set(value)):
            raise UnlearnFormatError(f"{where}: expected 'train' / 'val' lists, got keys {sorted(value)[:5]}")
        halves = ["train", "val"] if split == "all" else [split]
        out: list[Any] = []
        for h in halves:
            part = value.get(h, [])
            if not isinstance(part, list):
                raise UnlearnFormatError(f"{where}.{h} must be a list of items")
            out.extend(part)
        return out
    if isinstance(value, list):
        return value
    raise UnlearnFormatError(f"{where}: expected a list of items or a {{'train', 'val'}} object")


def parse_unlearn(data: Any, split: str = "all", retain: Any = None, name: str = "") -> UnlearnSet:
    """An :class:`UnlearnSet` from parsed JSON: ``{"unlearn": ..., "retention": ...}``, or one KnowUnDo split
    (the forget set) with ``retain`` the retention split's JSON."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if isinstance(data, dict) and "unlearn" in data:
        forget_raw, retain_raw = data["unlearn"], data.get("retention", [])
    else:
        forget_raw, retain_raw = data, retain if retain is not None else []
    forget = [UnlearnItem.from_record(r, f"unlearn[{i}]")
              for i, r in enumerate(_split_items(forget_raw, split, "unlearn"))]
    kept = [UnlearnItem.from_record(r, f"retention[{i}]")
            for i, r in enumerate(_split_items(retain_raw, split, "retention"))]
    return UnlearnSet(forget, kept, name=name)


def _read_json(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise UnlearnFormatError(f"{p}: no such file")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnlearnFormatError(f"{p}: not a JSON file ({exc})") from None


def load_unlearn_set(path: str | os.PathLike[str], split: str = "all",
                     retain: str | os.PathLike[str] | None = None) -> UnlearnSet:
    """Read a forget / retain set: a KnowUnDo split file (``retain``: the retention split's file) or a file
    holding both (``{"unlearn": ..., "retention": ...}``, the bundled layout). ``split``: ``train``, ``val``
    or ``all`` (both halves)."""
    data = _read_json(path)
    try:
        return parse_unlearn(data, split, _read_json(retain) if retain is not None else None, name=Path(path).name)
    except UnlearnFormatError as exc:
        raise UnlearnFormatError(f"{path}: {exc}") from None


def load_bundled_unlearn(split: str = "all") -> UnlearnSet:
    """The bundled forget / retain set built from what the default model knows (scripts/build_unlearn.py).

    ``split="train"`` is the half hyperparameters are tuned on, ``"val"`` the held-out half; their subjects
    do not overlap. Forget: facts of the bundled set; retain: the same subjects' other facts (relation
    specificity) and the same relations' other subjects (neighbourhood), all answered right by the model.
    """
    text = resources.files("knowscope.data").joinpath(BUNDLED_UNLEARN).read_text(encoding="utf-8")
    return parse_unlearn(json.loads(text), split, name=f"bundled:{split}")


def items_of(records: Iterable[dict[str, Any]]) -> list[UnlearnItem]:
    """Items from ``to_knowundo`` dicts (what an EditResult records)."""
    return [UnlearnItem.from_record(r, f"item[{i}]") for i, r in enumerate(records)]
