"""``knowscope facts``: top-1 accuracy of a model on a fact file (default: the bundled facts)."""

from __future__ import annotations

import argparse
from typing import Any

from knowscope.commands import add_model_argument, load_from_args
from knowscope.commands.edit import read_facts

NAME = "facts"
HELP = "top-1 accuracy of a model on a fact file (CounterFact, EasyEdit or zsRE JSON; default: bundled)"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--data", default=None, help="fact file, 'bundled' or 'bundled:NAME' (a bundled set; "
                        "default: the bundled facts)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N facts")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.knowledge import fact_accuracy

    facts = read_facts(args.data)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        facts = facts[: args.limit]
    model = load_from_args(args)
    report = fact_accuracy(model, facts)
    for rel, acc in report.by_relation().items():
        print(f"{rel:<24} {acc:.3f}")
    print(f"accuracy {report.accuracy:.3f} on {len(facts)} facts ({model.name})")
    return {"model": model.name, "data": args.data or "bundled", **report.to_dict()}
