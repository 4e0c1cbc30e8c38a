"""``knowscope trace``: causal tracing of one prompt, or the aggregate and located layer over a fact file."""

from __future__ import annotations

import argparse
import math
from typing import Any

from knowscope.commands import add_model_argument, bars, load_from_args, stage
from knowscope.commands.edit import read_facts

NAME = "trace"
HELP = "causal tracing (ROME): which layers and tokens carry a fact; --data for the average and the located layer"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--prompt", help="the prompt (BOS is prepended)")
    parser.add_argument("--subject", help="the part of the prompt to corrupt")
    parser.add_argument("--target", default=None, help="answer to score (default: the model's top-1 next token)")
    parser.add_argument("--data", default=None, help="fact file (CounterFact/EasyEdit/zsRE), 'bundled' or "
                        "'bundled:NAME': trace many facts, print the token-class averages and the located layer")
    parser.add_argument("--limit", type=int, default=None, help="with --data: use the first N facts")
    parser.add_argument("--kind", default="all", help="hidden, mlp, attn, hidden_frozen_mlp, hidden_frozen_attn, "
                        "a comma-separated list, or all (hidden,mlp,attn; default)")
    parser.add_argument("--samples", type=int, default=10, help="noise samples (default 10)")
    parser.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of the embedding std (3)")
    parser.add_argument("--noise-abs", type=float, default=None, help="absolute noise std (overrides --noise)")
    parser.add_argument("--window", type=int, default=10, help="layers restored together for mlp/attn (10)")
    parser.add_argument("--method", default="fast", choices=["fast", "reference", "attribution"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--locate-window", type=int, default=None, help="with --data: a window of layers (MEMIT)")
    parser.add_argument("--out", default=None, help="save the result directory here (JSON + safetensors)")


def _kinds(text: str) -> tuple[str, ...] | str:
    return "all" if text == "all" else tuple(k.strip() for k in text.split(",") if k.strip())


def _common(args: argparse.Namespace) -> dict[str, Any]:
    if args.window < 1:
        raise ValueError(f"--window must be >= 1, got {args.window}")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    return dict(kinds=_kinds(args.kind), samples=args.samples, noise=args.noise, noise_std=args.noise_abs,
                window=args.window, method=args.method, seed=args.seed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.circuits.tracing import trace

    if args.locate_window is not None and args.locate_window < 1:
        raise ValueError(f"--locate-window must be >= 1 (a window of layers), got {args.locate_window}")
    if args.data:
        return _run_data(args)
    if not args.prompt or not args.subject:
        raise ValueError("give --prompt and --subject (or --data FILE for many facts)")
    if args.subject not in args.prompt:
        raise ValueError(f"subject {args.subject!r} does not occur in prompt {args.prompt!r}")
    if args.target is not None and not args.target.strip():
        raise ValueError("--target is empty: give the answer text, or leave it out for the model's top-1")
    kwargs = _common(args)
    model = load_from_args(args)
    kinds = kwargs["kinds"]
    stage(f"causal trace of {args.prompt!r}: {kinds if isinstance(kinds, str) else ', '.join(kinds)} x "
          f"{model.arch.n_layers} layers, {args.samples} noise samples")
    result = trace(model, args.prompt, args.subject, target=args.target, progress=bars(), **kwargs)
    print(f"{model.name}: p({result.target!r}) clean {result.high_score:.4f}, corrupted {result.low_score:.4f} "
          f"({result.method}, {result.samples} samples, {result.seconds:.1f} s)")
    s0, s1 = result.subject_range
    for kind in result.scores:
        peak = result.peak(kind)
        tok = result.tokens[peak["token"]]
        score = float(result.scores[kind][peak["token"], peak["layer"]])
        print(f"  {kind:<18} peak layer {peak['layer']:>3} at token {peak['token']} ({tok!r}): {score:.4f}")
        row = result.scores[kind][s1 - 1]
        best = int(row.argmax())
        print(f"  {'':<18} at the last subject token: best layer {best} ({float(row[best]):.4f})")
    if args.out:
        result.save(args.out)
        print(f"saved {args.out}")
    return result.to_dict()


def _run_data(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.circuits.tracing import TOKEN_CLASSES, locate, trace_facts

    facts = read_facts(args.data)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        facts = facts[: args.limit]
    if not facts:
        raise ValueError(f"no facts in {args.data}")
    kwargs = _common(args)
    kinds = kwargs.pop("kinds")
    model = load_from_args(args)
    if args.locate_window is not None and args.locate_window > model.arch.n_layers:
        raise ValueError(f"--locate-window {args.locate_window}: {model.name} has {model.arch.n_layers} layers")
    stage(f"causal traces of {len(facts)} facts ({args.samples} noise samples each)")
    agg = trace_facts(model, facts, kinds=kinds, progress=True, **kwargs)
    print(f"{model.name}: average indirect effect over {agg.n_facts} facts (best layer per token class)")
    for kind in agg.kinds:
        for c in TOKEN_CLASSES:
            row = agg.effect(kind, c)
            if agg.class_counts[c] and not math.isnan(float(row.max())):
                print(f"  {kind:<6} {c:<17} layer {int(row.argmax()):>3}  AIE {float(row.max()):.4f}")
    out: dict[str, Any] = agg.to_dict()
    kind = "mlp" if "mlp" in agg.kinds else agg.kinds[0]
    if kind in ("hidden", "mlp", "attn"):
        choice = locate(model, agg, kind=kind, window=args.locate_window)
        print(f"located layer ({kind}, last subject token): {choice.layer}"
              + (f"; window {choice.layers}" if args.locate_window else ""))
        out["located"] = choice.to_dict()
    if args.out:
        agg.save(args.out)
        print(f"saved {args.out}")
    return out
