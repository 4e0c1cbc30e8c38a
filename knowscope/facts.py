"""Facts and edit requests: one :class:`Fact` record, read from and written to the usual formats.

A fact is a subject, a prompt template with ``{}`` where the subject goes, the true object and a
counterfactual new object (CounterFact's ``requested_rewrite``), plus the evaluation prompts of
CounterFact (paraphrases, neighbourhood prompts of other subjects with the same true object,
generation prompts) and of EasyEdit/KnowEdit (locality and portability prompt/answer pairs, and
relation-specificity probes: the same subject under other relations, whose answers an edit of this
fact must leave alone).

Targets are stored as CounterFact stores them (``"Paris"``, no leading space); the token
continuation a model is scored on is ``" " + target`` (:meth:`Fact.continuation`), as ROME does.

Readers: CounterFact JSON (a list of records with ``requested_rewrite``), EasyEdit/KnowEdit JSON
(``prompt``/``subject``/``target_new``/``ground_truth``/``rephrase_prompt``/``locality``...) and
zsRE JSON (``src``/``subject``/``alt``/``answers``/``rephrase``/``loc``/``loc_ans``). A malformed
record raises :class:`FactFormatError` naming the record index and the field.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

BUNDLED_FACTS = "facts.json"
BUNDLED_SETS = {"default": BUNDLED_FACTS, "extended": "facts_extended.json", "same_subject": "facts_same_subject.json",
                "extra": "facts_extra.json"}


#: longest subject or prompt template a fact may have (CounterFact prompts are one sentence)
MAX_FIELD_CHARS = 1000


class FactFormatError(ValueError):
    """A fact file or record is malformed; the message names the record and the field."""


class Probe(NamedTuple):
    """A prompt about a fact's subject under another relation, and the answer it must keep.

    ``relation_id`` names that other relation where it is known (the bundled sets; KnowEdit's files
    leave it empty). An evaluation drops a probe only when its (subject, relation) is itself edited.
    """

    prompt: str
    answer: str
    relation_id: str = ""


@dataclass
class Fact:
    """One fact and its counterfactual rewrite, with evaluation prompts.

    ``prompt`` is a template with one ``{}`` for the subject, e.g. ``"The capital of {} is"``.
    """

    subject: str
    prompt: str
    target_true: str
    target_new: str
    relation_id: str = ""
    case_id: int | str | None = None
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    locality: list[tuple[str, str]] = field(default_factory=list)
    portability: list[tuple[str, str]] = field(default_factory=list)
    relation_specificity: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:  # noqa: C901 - one check per field
        where = f"fact {self.case_id!r}" if self.case_id is not None else f"fact about {self.subject!r}"
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise FactFormatError(f"{where}: field 'subject' must be a non-empty string")
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise FactFormatError(f"{where}: field 'prompt' must contain exactly one '{{}}', got {self.prompt!r}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None]
        except ValueError as exc:
            raise FactFormatError(f"{where}: field 'prompt' {self.prompt!r} is not a template ({exc})") from None
        other = [f for f in fields if f != ""]
        if other:
            raise FactFormatError(f"{where}: field 'prompt' {self.prompt!r} has format field {{{other[0]}}}; only "
                                  "'{}' (the subject) may appear (write other braces as '{{' and '}}')")
        for name in ("subject", "prompt"):
            if len(getattr(self, name)) > MAX_FIELD_CHARS:
                n_chars = len(getattr(self, name))
                raise FactFormatError(f"{where}: field {name!r} is {n_chars:,} characters long; a fact is one "
                                      f"sentence (at most {MAX_FIELD_CHARS:,} characters)")
        for name in ("target_true", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise FactFormatError(f"{where}: field '{name}' must be a non-empty string, got {value!r}")
        probes = []
        for i, item in enumerate(self.relation_specificity):
            probe = Probe(*item) if isinstance(item, (tuple, list)) and 2 <= len(item) <= 3 else None
            if probe is None or not all(isinstance(x, str) for x in probe) or not probe.prompt.strip() \
                    or not probe.answer.strip():
                raise FactFormatError(f"{where}: relation_specificity[{i}] needs a non-empty prompt and answer, "
                                      f"got {item!r}")
            probes.append(probe)
        self.relation_specificity = probes
        for kind in ("locality", "portability"):
            for i, item in enumerate(getattr(self, kind)):
                if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) and x.strip()
                                                                                   for x in item)):
                    raise FactFormatError(f"{where}: {kind}[{i}] needs a non-empty prompt and answer, got {item!r}")

    # --- text ---------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @staticmethod
    def continuation(target: str) -> str:
        """The continuation a model is scored on: the target with one leading space."""
        return target if target.startswith(" ") else " " + target

    @property
    def true_continuation(self) -> str:
        return self.continuation(self.target_true)

    @property
    def new_continuation(self) -> str:
        return self.continuation(self.target_new)

    # --- CounterFact format ------------------------------------------------------------------
    def to_counterfact(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "case_id": self.case_id,
            "requested_rewrite": {
                "prompt": self.prompt,
                "relation_id": self.relation_id,
                "subject": self.subject,
                "target_true": {"str": self.target_true},
                "target_new": {"str": self.target_new},
            },
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": list(self.neighborhood_prompts),
            "attribute_prompts": list(self.attribute_prompts),
            "generation_prompts": list(self.generation_prompts),
        }
        if self.locality:
            record["locality"] = [{"prompt": p, "ground_truth": a} for p, a in self.locality]
        if self.portability:
            record["portability"] = [{"prompt": p, "ground_truth": a} for p, a in self.portability]
        if self.relation_specificity:
            record["relation_specificity"] = [{"prompt": p.prompt, "ground_truth": p.answer,
                                               "relation_id": p.relation_id} for p in self.relation_specificity]
        return record

    @classmethod
    def from_counterfact(cls, record: dict[str, Any], index: int = 0) -> Fact:
        where = f"record {index}"
        rw = _get(record, "requested_rewrite", dict, where)
        subject = _get(rw, "subject", str, where + ".requested_rewrite")
        prompt = _get(rw, "prompt", str, where + ".requested_rewrite")
        if "{}" not in prompt:
            raise FactFormatError(
                f"{where}: field 'requested_rewrite.prompt' has no '{{}}' for the subject: {prompt!r}"
            )
        return cls(
            subject=subject,
            prompt=prompt,
            target_true=_target(rw, "target_true", where),
            target_new=_target(rw, "target_new", where),
            relation_id=str(rw.get("relation_id", "")),
            case_id=record.get("case_id", index),
            paraphrase_prompts=_str_list(record, "paraphrase_prompts", where),
            neighborhood_prompts=_str_list(record, "neighborhood_prompts", where),
            generation_prompts=_str_list(record, "generation_prompts", where),
            attribute_prompts=_str_list(record, "attribute_prompts", where),
            locality=_pairs(record.get("locality", []), where + ".locality"),
            portability=_pairs(record.get("portability", []), where + ".portability"),
            relation_specificity=_probes(record.get("relation_specificity", []), where + ".relation_specificity"),
        )

    # --- EasyEdit / KnowEdit format --------------------------------------------------------------
    @classmethod
    def from_easyedit(cls, record: dict[str, Any], index: int = 0) -> Fact:
        where = f"record {index}"
        prompt = _get(record, "prompt", str, where)
        subject = _get(record, "subject", str, where)
        truth = record.get("ground_truth", record.get("target_true"))
        if isinstance(truth, list):
            truth = truth[0] if truth else None
        if not isinstance(truth, str) or not truth:
            raise FactFormatError(f"{where}: field 'ground_truth' must be a non-empty string or list of strings")
        rephrase = record.get("rephrase_prompt", record.get("rephrase", []))
        if isinstance(rephrase, str):
            rephrase = [rephrase]
        if not isinstance(rephrase, list) or not all(isinstance(r, str) for r in rephrase):
            raise FactFormatError(f"{where}: field 'rephrase_prompt' must be a string or a list of strings, "
                                  f"got {rephrase!r}")
        locality = record.get("locality", {})
        # KnowEdit's Relation_Specificity: the same subject under other relations; it counts in locality too
        specific = (locality.get("Relation_Specificity") if isinstance(locality, dict) else None) or []
        return cls(
            subject=subject,
            prompt=_template(prompt, subject, where),
            target_true=truth,
            target_new=_get(record, "target_new", str, where),
            relation_id=str(record.get("relation_id", record.get("relation", ""))),
            case_id=record.get("case_id", index),
            paraphrase_prompts=list(rephrase),
            locality=_nested_pairs(locality, where + ".locality")
            + _flat_pair(record, "locality_prompt", "locality_ground_truth"),
            portability=_nested_pairs(record.get("portability", {}), where + ".portability"),
            relation_specificity=[Probe(p, a) for p, a in _nested_pairs(
                {"Relation_Specificity": specific}, where + ".locality")],
        )

    # --- zsRE format (MEND / ROME) -----------------------------------------------------------------
    @classmethod
    def from_zsre(cls, record: dict[str, Any], index: int = 0) -> Fact:
        where = f"record {index}"
        question = _get(record, "src", str, where)
        subject = _get(record, "subject", str, where)
        answers = record.get("answers")
        if not isinstance(answers, list) or not answers or not isinstance(answers[0], str):
            raise FactFormatError(f"{where}: field 'answers' must be a non-empty list of strings")
        rephrase = record.get("rephrase")
        loc, loc_ans = record.get("loc"), record.get("loc_ans")
        return cls(
            subject=subject,
            prompt=_template(question, subject, where),
            target_true=answers[0],
            target_new=_get(record, "alt", str, where),
            relation_id="zsre",
            case_id=record.get("case_id", index),
            paraphrase_prompts=[rephrase] if isinstance(rephrase, str) else [],
            locality=[(loc.removeprefix("nq question: "), loc_ans)]
            if isinstance(loc, str) and isinstance(loc_ans, str)
            else [],
        )


# --- helpers for the readers --------------------------------------------------------------------------


def _get(record: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(record, dict):
        raise FactFormatError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise FactFormatError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise FactFormatError(f"{where}: field '{key}' must be a non-empty {kind.__name__}, got {value!r}")
    return value


def _target(rw: dict[str, Any], key: str, where: str) -> str:
    value = rw.get(key)
    if isinstance(value, dict):
        value = value.get("str")
    if not isinstance(value, str) or not value.strip():
        raise FactFormatError(f"{where}: field 'requested_rewrite.{key}.str' must be a non-empty string")
    return value


def _str_list(record: dict[str, Any], key: str, where: str) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FactFormatError(f"{where}: field '{key}' must be a list of strings")
    return list(value)


def _pairs(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise FactFormatError(f"{where}: must be a list of {{prompt, ground_truth}} objects")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise FactFormatError(f"{where}[{i}]: needs a string 'prompt'")
        answer = item.get("ground_truth")
        if isinstance(answer, list):
            answer = answer[0] if answer else None
            while isinstance(answer, list):
                answer = answer[0] if answer else None
        if not isinstance(answer, str) or not answer.strip():
            raise FactFormatError(f"{where}[{i}]: needs a non-empty string 'ground_truth', got {answer!r}")
        if not item["prompt"].strip():
            raise FactFormatError(f"{where}[{i}]: 'prompt' is empty")
        out.append((item["prompt"], answer))
    return out


def _probes(value: Any, where: str) -> list[Probe]:
    """Relation-specificity probes: ``[{prompt, ground_truth, relation_id?}, ...]``."""
    pairs = _pairs(value, where)
    out = []
    for i, ((prompt, answer), item) in enumerate(zip(pairs, value, strict=True)):
        rel = item.get("relation_id", "")
        if not isinstance(rel, str):
            raise FactFormatError(f"{where}[{i}]: 'relation_id' must be a string, got {rel!r}")
        out.append(Probe(prompt, answer, rel))
    return out


def _nested_pairs(value: Any, where: str) -> list[tuple[str, str]]:
    """EasyEdit's ``{"Relation_Specificity": [{prompt, ground_truth}, ...], ...}`` (or one object)."""
    if not value:
        return []
    if isinstance(value, list):
        return _pairs(value, where)
    if not isinstance(value, dict):
        raise FactFormatError(f"{where}: must be an object of lists of {{prompt, ground_truth}}")
    out: list[tuple[str, str]] = []
    for name, items in value.items():
        if isinstance(items, dict):
            items = [items]
        if isinstance(items, dict) or isinstance(items, list):
            if items and isinstance(items[0], dict) and isinstance(items[0].get("prompt"), list):
                items = [{"prompt": p, "ground_truth": g} for it in items
                         for p, g in zip(it["prompt"], it["ground_truth"], strict=False)]
            out.extend(_pairs(items, f"{where}.{name}"))
    return out


def _flat_pair(record: dict[str, Any], pkey: str, akey: str) -> list[tuple[str, str]]:
    p, a = record.get(pkey), record.get(akey)
    if isinstance(a, list):
        a = a[0] if a else None
    return [(p, a)] if isinstance(p, str) and isinstance(a, str) else []


def _template(prompt: str, subject: str, where: str) -> str:
    if "{}" in prompt:
        return prompt
    if subject not in prompt:
        raise FactFormatError(f"{where}: subject {subject!r} does not occur in prompt {prompt!r}")
    return prompt.replace(subject, "{}", 1)


# --- files ----------------------------------------------------------------------------------------------


def parse_facts(records: Any, fmt: str = "auto") -> list[Fact]:
    """Parse a list of records in CounterFact, EasyEdit/KnowEdit or zsRE format."""
    if isinstance(records, dict) and "facts" in records:
        records = records["facts"]
    if not isinstance(records, list):
        raise FactFormatError("a fact file must hold a JSON list of records")
    facts = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise FactFormatError(f"record {i}: expected an object, got {type(record).__name__}")
        kind = fmt if fmt != "auto" else detect_format(record, i)
        reader = {"counterfact": Fact.from_counterfact, "easyedit": Fact.from_easyedit, "zsre": Fact.from_zsre}
        if kind not in reader:
            raise FactFormatError(f"unknown fact format {kind!r}; valid: auto, counterfact, easyedit, zsre")
        facts.append(reader[kind](record, i))
    return facts


def detect_format(record: dict[str, Any], index: int = 0) -> str:
    if "requested_rewrite" in record:
        return "counterfact"
    if "src" in record and "alt" in record:
        return "zsre"
    if "prompt" in record and "target_new" in record:
        return "easyedit"
    raise FactFormatError(
        f"record {index}: unknown format (fields {sorted(record)[:8]}); expected CounterFact "
        "('requested_rewrite'), EasyEdit ('prompt', 'subject', 'target_new') or zsRE ('src', 'alt')"
    )


def load_facts(path: str | os.PathLike[str], fmt: str = "auto") -> list[Fact]:
    """Read facts from a JSON file (CounterFact, EasyEdit/KnowEdit or zsRE; detected per record)."""
    p = Path(path)
    if p.is_dir():
        raise FactFormatError(f"fact file {p} is a folder; give a JSON file")
    if not p.is_file():
        raise FileNotFoundError(f"fact file {p} does not exist")
    try:
        records = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FactFormatError(f"fact file {p} is not UTF-8 text (byte {exc.object[exc.start]:#x} at position "
                              f"{exc.start}); save it as UTF-8") from None
    except RecursionError:
        raise FactFormatError(f"fact file {p} is nested too deeply to be a fact list") from None
    except json.JSONDecodeError as exc:
        raise FactFormatError(f"{p} is not valid JSON: {exc}") from exc
    try:
        return parse_facts(records, fmt)
    except FactFormatError as exc:
        raise FactFormatError(f"{p}: {exc}") from None


def save_facts(facts: Iterable[Fact], path: str | os.PathLike[str]) -> Path:
    """Write facts in CounterFact format, atomically (temp file + rename)."""
    return write_json_atomic(path, [f.to_counterfact() for f in facts])


def load_bundled_facts(relation: str | None = None, limit: int | None = None, name: str = "default") -> list[Fact]:
    """The bundled CounterFact-format facts that the default model knows (built by scripts/build_facts.py).

    ``name="default"``: the 214 facts every benchmark and test uses. ``"extended"``: 792 facts over
    17 relations, every subject unique across the set, for runs that need more facts than that
    (500 sequential edits plus a never-edited probe); built the same way with more candidates.
    ``"same_subject"``: subjects of the extended set edited under two or three relations each (all
    first edits, then all second, then all third: a sequential run edits a subject again after others),
    built by scripts/build_probes.py. ``"extra"``: facts the model knows that no other set holds (new
    subjects, the extended set's rules against it), for lifelong runs of more than the 878 edits the
    extended and same-subject sets give; built by ``scripts/build_facts.py --set extra``, without probes.

    Each fact carries ``relation_specificity`` probes (the subject under other relations, answered right
    by the default model) where the knowledge tables have them, and ``portability`` prompts (one hop
    after the edited link) where a chain exists; both are built by scripts/build_probes.py.
    """
    if name not in BUNDLED_SETS:
        raise ValueError(f"unknown bundled fact set {name!r}; valid: {', '.join(BUNDLED_SETS)}")
    text = resources.files("knowscope.data").joinpath(BUNDLED_SETS[name]).read_text(encoding="utf-8")
    facts = parse_facts(json.loads(text), "counterfact")
    if relation is not None:
        facts = [f for f in facts if f.relation_id == relation]
        if not facts:
            raise ValueError(f"no bundled facts with relation {relation!r}")
    return facts[:limit] if limit is not None else facts


def relations(facts: Sequence[Fact]) -> dict[str, int]:
    """Count of facts per relation id."""
    out: dict[str, int] = {}
    for f in facts:
        out[f.relation_id] = out.get(f.relation_id, 0) + 1
    return out


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON to a temp file beside ``path`` and rename it into place (never half-written)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, ensure_ascii=False, default=_json_default)
            fh.write("\n")
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
