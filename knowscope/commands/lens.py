"""``knowscope lens``: the logit lens on a prompt — top tokens per layer, and a target's rank by layer."""

from __future__ import annotations

import argparse
from typing import Any

from knowscope.commands import add_model_argument, load_from_args

NAME = "lens"
HELP = "logit lens: each layer's top next tokens (final norm + unembedding), a target's rank by layer"
ORDER = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--prompt", required=True, help="the prompt (BOS is prepended)")
    parser.add_argument("--target", default=None, help="a continuation to track, e.g. ' Paris' (leading space added)")
    parser.add_argument("--top-k", type=int, default=5, help="top tokens per layer (default 5)")
    parser.add_argument("--save", metavar="DIR", default=None, help="save the LogitLensResult to DIR")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.facts import Fact
    from knowscope.probes.lens import logit_lens

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_k > 1000:
        raise ValueError(f"--top-k {args.top_k} is too many to show; use at most 1000")
    if not args.prompt.strip():
        raise ValueError("--prompt is empty")
    model = load_from_args(args)
    targets = [Fact.continuation(args.target)] if args.target else []
    res = logit_lens(model, args.prompt, targets=targets, k=args.top_k)
    print(f"logit lens on {model.name}: {args.prompt!r} (last position)")
    for row in res.top_by_layer():
        extra = ""
        if targets:
            extra = f"   {args.target!r} rank {int(res.target_ranks[0, row['layer']])}"
        tops = ", ".join(f"{t!r} {p:.2f}" for t, p in zip(row["tokens"], row["probs"], strict=True))
        print(f"  layer {row['layer']:>2}: {tops}{extra}")
    out = {"model": model.name, "fingerprint": model.fingerprint, **res.to_dict()}
    if targets:
        out["target"] = {"text": args.target, "rank_by_layer": res.target_ranks[0].tolist(),
                         "first_top1_layer": res.first_top1_layer(0)}
    if args.save:
        out["saved"] = str(res.save(args.save))
    return out
