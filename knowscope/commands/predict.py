"""``knowscope predict``: the top-k next tokens of a prompt, with probabilities."""

from __future__ import annotations

import argparse
from typing import Any

from knowscope.commands import add_model_argument, load_from_args

NAME = "predict"
HELP = "top-k next tokens of a prompt, with probabilities"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--prompt", required=True, help="the prompt (BOS is prepended)")
    parser.add_argument("--top-k", type=int, default=5, help="how many tokens to show (default 5)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    model = load_from_args(args)
    top = model.top_k(args.prompt, args.top_k)
    for rank, (text, prob, _) in enumerate(top, 1):
        print(f"{rank:>3}  {text!r:<20} {prob:.4f}")
    return {
        "model": model.name,
        "prompt": args.prompt,
        "top": [{"token": t, "id": i, "prob": p} for t, p, i in top],
    }
