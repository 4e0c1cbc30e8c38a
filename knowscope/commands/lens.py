"""``knowscope lens``: the logit (or tuned) lens on a prompt or over a fact file; ``--tuned --train`` trains the lens.

* ``--prompt P [--target T]``: each layer's top next tokens at the last position, and T's rank by layer;
* ``--data FILE|bundled [--limit N]``: per fact, the first layer where the true object is top-1 / top-5;
  the JSON reports ``share_top1_before_last``, ``share_top5_before_last``, ``median_first_top1_layer``;
* ``--tuned``: read through the tuned lens (trained on first use, then cached by model fingerprint);
  ``--tuned --train``: train (or reuse the cached) lens and report its held-out ``kl_by_layer``.
"""

from __future__ import annotations

import argparse
from typing import Any

from knowscope.commands import add_model_argument, bars, load_from_args, stage
from knowscope.commands.edit import read_facts

NAME = "lens"
HELP = "logit / tuned lens: each layer's top next tokens, a target's rank by layer, or a fact file's readout"
ORDER = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--prompt", default=None, help="the prompt (BOS is prepended)")
    parser.add_argument("--target", default=None, help="a continuation to track, e.g. ' Paris' (leading space added)")
    parser.add_argument("--data", default=None, help="fact file (CounterFact/EasyEdit/zsRE), 'bundled' or "
                        "'bundled:NAME': report where each fact's true object becomes top-1 / top-5")
    parser.add_argument("--limit", type=int, default=None, help="with --data: use the first N facts")
    parser.add_argument("--top-k", type=int, default=5, help="top tokens per layer (default 5)")
    parser.add_argument("--tuned", action="store_true", help="read through the tuned lens (trained once, cached)")
    parser.add_argument("--train", action="store_true", help="with --tuned: train (or reuse the cached) lens and "
                        "report its held-out KL per layer")
    parser.add_argument("--retrain", action="store_true", help="with --tuned: train again even if one is cached")
    parser.add_argument("--text", default="self", help="with --tuned: training text — 'self' (the model's own "
                        "samples, default), 'hf:<dataset>', or a text file")
    parser.add_argument("--train-tokens", type=int, default=None, help="with --tuned: training tokens")
    parser.add_argument("--steps", type=int, default=None, help="with --tuned: optimisation steps")
    parser.add_argument("--save", metavar="DIR", default=None, help="save the LogitLensResult (--prompt) or the "
                        "TunedLens (--train) to DIR")


def _tuned(args: argparse.Namespace, model: Any) -> Any:
    from knowscope.probes.tuned_lens import DEFAULT_STEPS, DEFAULT_TRAIN_TOKENS, tuned_lens

    n_tokens = args.train_tokens if args.train_tokens is not None else DEFAULT_TRAIN_TOKENS
    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    if n_tokens < 64 or steps < 1:
        raise ValueError(f"--train-tokens must be >= 64 and --steps >= 1, got {n_tokens}, {steps}")
    stage(f"tuned lens: loaded from the cache, or trained once on {n_tokens:,} tokens of {args.text!r} text "
          f"({steps} steps; minutes on a laptop CPU for the default model) and cached")
    lens = tuned_lens(model, source=args.text, n_tokens=n_tokens, steps=steps, retrain=args.retrain, progress=bars())
    how = "loaded from the cache" if lens.meta.get("from_cache") else "trained and cached"
    print(f"tuned lens for {model.name}: {lens.meta.get('train_tokens')} training tokens, "
          f"{lens.meta.get('settings', {}).get('steps')} steps ({how}: {lens.meta.get('cached')})")
    return lens


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.facts import Fact

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_k > 1000:
        raise ValueError(f"--top-k {args.top_k} is too many to show; use at most 1000")
    if (args.train or args.retrain) and not args.tuned:
        raise ValueError("--train / --retrain train the tuned lens: add --tuned")
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty")
    if args.target is not None and not args.target.strip():
        raise ValueError("--target is empty: give the continuation to track, or leave it out")
    if args.prompt is None and args.data is None and not args.train:
        raise ValueError("give --prompt (one prompt), --data FILE (a fact file), or --tuned --train")
    if args.prompt is not None and args.data is not None:
        raise ValueError("give --prompt or --data, not both")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    facts = None
    if args.data is not None:
        facts = read_facts(args.data)
        facts = facts[: args.limit] if args.limit is not None else facts
        if not facts:
            raise ValueError(f"no facts in {args.data}")
    model = load_from_args(args)
    tuned = _tuned(args, model) if args.tuned else None
    out: dict[str, Any] = {"model": model.name, "fingerprint": model.fingerprint,
                           "lens": "tuned" if tuned is not None else "logit"}
    if args.train:
        q = tuned.quality
        out["kl_by_layer"] = q.kl_tuned
        out["kl_by_layer_logit"] = q.kl_logit
        out["top1_agreement_by_layer"] = q.top1_tuned
        out["top1_agreement_by_layer_logit"] = q.top1_logit
        out["held_out_tokens"] = q.n_tokens
        out["train_tokens"] = tuned.meta.get("train_tokens")
        out["train_seconds"] = tuned.meta.get("seconds_total")
        print(q.table())
        if args.save and args.prompt is None:
            out["saved"] = str(tuned.save(args.save))
    if facts is not None:
        out.update(_readout(model, facts, tuned))
    if args.prompt is not None:
        out.update(_prompt(args, model, tuned, Fact))
    return out


def _readout(model: Any, facts: list[Any], tuned: Any) -> dict[str, Any]:
    from knowscope.probes.lens import fact_readout

    r = fact_readout(model, facts, tuned=tuned)
    median = r["median_first_top1_layer"]
    print(f"{r['lens']} lens over {r['n_facts']} facts: true object top-1 before the last layer for "
          f"{100 * r['share_top1_before_last']:.1f}%, top-5 for {100 * r['share_top5_before_last']:.1f}%; "
          f"median first top-1 layer {median if median is not None else '-'} of {r['n_layers'] - 1}")
    return r


def _prompt(args: argparse.Namespace, model: Any, tuned: Any, fact_cls: Any) -> dict[str, Any]:
    from knowscope.probes.lens import lens

    targets = [fact_cls.continuation(args.target)] if args.target else []
    res = lens(model, args.prompt, targets=targets, k=args.top_k, tuned=tuned)
    print(f"{res.meta['lens']} lens on {model.name}: {args.prompt!r} (last position)")
    for row in res.top_by_layer():
        extra = ""
        if targets:
            extra = f"   {args.target!r} rank {int(res.target_ranks[0, row['layer']])}"
        tops = ", ".join(f"{t!r} {p:.2f}" for t, p in zip(row["tokens"], row["probs"], strict=True))
        print(f"  layer {row['layer']:>2}: {tops}{extra}")
    out = res.to_dict()
    if targets:
        out["target"] = {"text": args.target, "rank_by_layer": res.target_ranks[0].tolist(),
                         "first_top1_layer": res.first_top1_layer(0)}
    if args.save:
        out["saved"] = str(res.save(args.save))
    return out
