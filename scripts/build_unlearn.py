"""Build the bundled forget / retain set (knowscope/data/unlearn.json) from what the default model knows.

The set follows KnowUnDo's layout (``{"unlearn": [{"train": [...], "val": [...]}], "retention": [...]}``,
items with ``text`` and ``labels``) and its idea: the boundary between what to forget and what to keep is
tight. From the bundled default facts (``knowscope/data/facts.json``) that carry relation-specificity probes:

* **forget**: the fact itself (its filled prompt and true answer), with up to ``MAX_PARAPHRASES`` of its
  paraphrase prompts (scored, never trained on);
* **retain**: the same subject's other facts (its ``relation_specificity`` probes, e.g. Mexico's capital when
  Mexico's language is forgotten) and up to ``MAX_NEIGHBOURS`` of its ``neighborhood_prompts`` (the same
  relation for other subjects, with the same answer: Argentina's language is also Spanish).

Every prompt is kept only when the default model's greedy continuation begins with its answer (the check
the unlearning metrics make); a fact is kept only with at least one retain item of each kind left. No
retain prompt names a forget subject of the same split, and subjects are unique. The facts are taken
round-robin over relations (most diverse first) and alternately assigned to ``train`` (for tuning) and
``val`` (held out), ``PER_SPLIT`` each.

Usage::

    python scripts/build_unlearn.py          # write knowscope/data/unlearn.json (~1-2 minutes on 2 CPU cores)
    python scripts/build_unlearn.py --check  # rebuild in memory; exit 1 unless identical to the file
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knowscope.editing.evaluation.generation import begins_with, decode, greedy_continuations  # noqa: E402
from knowscope.editing.unlearning.data import UnlearnItem, UnlearnSet  # noqa: E402
from knowscope.facts import load_bundled_facts  # noqa: E402
from knowscope.models import load_model  # noqa: E402

OUT = REPO / "knowscope" / "data" / "unlearn.json"
PER_SPLIT = 16
MAX_PARAPHRASES = 2
MAX_NEIGHBOURS = 2
MAX_RS = 3

logger = logging.getLogger("build_unlearn")


def _knows(model, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """Does the model's greedy continuation of each prompt begin with its answer?"""
    reqs = {}
    for prompt, answer in pairs:
        ids = tuple(int(t) for t in model.to_tokens(prompt)[0])
        reqs[(prompt, answer)] = (ids, len(model.encode_target(" " + answer)) + 2)
    conts = greedy_continuations(model, list(reqs.values()))
    return {k: begins_with(decode(model, conts[r]), k[1]) for k, r in reqs.items()}


def build(model) -> dict:
    facts = [f for f in load_bundled_facts() if f.relation_specificity]
    pairs = []
    for f in facts:
        pairs.append((f.text, f.target_true))
        pairs += [(p, f.target_true) for p in f.paraphrase_prompts]
        pairs += [(p.prompt, p.answer) for p in f.relation_specificity]
        pairs += [(p, f.target_true) for p in f.neighborhood_prompts[:6]]
    known = _knows(model, pairs)
    by_rel: dict[str, list] = defaultdict(list)
    for f in facts:
        by_rel[f.relation_id].append(f)
    order = []  # round-robin over relations, in the order of the file
    queues = [list(v) for _, v in sorted(by_rel.items(), key=lambda kv: -len(kv[1]))]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    subjects: set[str] = set()
    turn = 0
    for f in order:
        name = ("train", "val")[turn % 2]
        forget, retain = splits[name]
        if len(forget) >= PER_SPLIT:
            name = ("train", "val")[(turn + 1) % 2]
            forget, retain = splits[name]
            if len(forget) >= PER_SPLIT:
                break
        if not known[(f.text, f.target_true)] or f.subject in subjects:
            continue
        if any(s in f.text or f.subject in s for s in subjects):
            continue
        rs = [UnlearnItem(p.prompt, p.answer, f.subject, p.relation_id, "relation_specificity")
              for p in f.relation_specificity if known[(p.prompt, p.answer)]][:MAX_RS]
        taken = {i.subject for i in forget} | {f.subject}
        nb = [UnlearnItem(p, f.target_true, "", f.relation_id, "neighborhood") for p in f.neighborhood_prompts[:6]
              if known[(p, f.target_true)] and not any(s in p for s in taken)][:MAX_NEIGHBOURS]
        if not rs or not nb:
            continue
        paraphrases = tuple(p for p in f.paraphrase_prompts if known[(p, f.target_true)])[:MAX_PARAPHRASES]
        item = UnlearnItem(f.text, f.target_true, f.subject, f.relation_id, "fact", paraphrases)
        # a neighbour of an earlier fact must not name this subject (it would be forgotten and kept)
        if any(f.subject in r.prompt for r in retain):
            continue
        forget.append(item)
        retain.extend(rs + nb)
        subjects.add(f.subject)
        turn += 1
    for name, (forget, retain) in splits.items():
        UnlearnSet(forget, retain)  # the same checks a reader makes
        logger.info("%s: %d forget, %d retain", name, len(forget), len(retain))
    return {
        "unlearn": [{h: [i.to_knowundo() for i in splits[h][0]] for h in ("train", "val")}],
        "retention": [{h: [i.to_knowundo() for i in splits[h][1]] for h in ("train", "val")}],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="rebuild in memory and compare with the file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = json.dumps(build(load_model()), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        same = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        logger.info("%s: %s", OUT, "identical" if same else "DIFFERS")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    logger.info("wrote %s", OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
