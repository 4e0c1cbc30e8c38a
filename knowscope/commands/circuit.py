"""``knowscope circuit``: the knowledge circuit of a fact (or a batch of one relation) by EAP / EAP-IG."""

from __future__ import annotations

import argparse
import time
from typing import Any

from knowscope.commands import add_model_argument, load_from_args, stage
from knowscope.commands.edit import read_facts

NAME = "circuit"
HELP = "knowledge circuit of a fact (EAP / EAP-IG edge attribution, exact-patching faithfulness)"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    one = parser.add_argument_group("one fact")
    one.add_argument("--prompt", help="prompt with the subject in it (or '{}' where the subject goes)")
    one.add_argument("--subject", help="the subject, as it appears in the prompt")
    one.add_argument("--target", help="the true object, e.g. 'Paris' (scored as ' Paris')")
    one.add_argument("--contrast-subject", help="subject to swap in (same token length); default: noise corruption")
    one.add_argument("--contrast", help="contrast answer for the logit difference (default: log-probability metric)")
    many = parser.add_argument_group("a batch of facts")
    many.add_argument("--data", help="fact file (CounterFact / EasyEdit / zsRE JSON), 'bundled' or 'bundled:NAME' "
                      "(a bundled set); default: the bundled facts")
    many.add_argument("--relation", help="relation id to take facts of (e.g. P36)")
    many.add_argument("--limit", type=int, default=8, help="how many facts (default 8)")
    parser.add_argument("--method", default="eap-ig", choices=["eap", "eap-ig"], help="default eap-ig")
    parser.add_argument("--ig-steps", type=int, default=5, help="integrated-gradient steps (default 5)")
    parser.add_argument("--metric", default="auto", choices=["auto", "logit_diff", "logprob"],
                        help="auto: logit_diff when a contrast answer exists, else logprob")
    parser.add_argument("--corruption", default="auto", choices=["auto", "swap", "noise"],
                        help="auto: swap with --contrast-subject or for a batch, else noise")
    parser.add_argument("--top-n", type=int, help="keep the top-n edges (default: smallest faithful circuit)")
    parser.add_argument("--target-faithfulness", type=float, default=0.8, help="default 0.8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-edges-json", type=int, default=2000, help="at most this many edges in the JSON")
    parser.add_argument("--out", help="save the circuit to this directory (meta.json + arrays.safetensors)")


def _facts(args: argparse.Namespace) -> tuple[list[Any], str, list[str] | None, list[str | None] | None]:
    from knowscope.circuits.batches import as_template
    from knowscope.facts import Fact

    if args.prompt is not None or args.subject is not None or args.target is not None:
        missing = [n for n in ("prompt", "subject", "target") if getattr(args, n) is None]
        if missing:
            names = ", ".join("--" + m for m in missing)
            raise ValueError(f"one fact needs --prompt, --subject and --target (missing: {names})")
        if args.data:
            raise ValueError("give either --prompt/--subject/--target or --data, not both")
        template = as_template(args.prompt, args.subject)
        fact = Fact(subject=args.subject, prompt=template, target_true=args.target,
                    target_new=args.contrast or args.target, relation_id=args.relation or "")
        corruption = args.corruption if args.corruption != "auto" else ("swap" if args.contrast_subject else "noise")
        if corruption == "swap" and not args.contrast_subject:
            raise ValueError("--corruption swap with one fact needs --contrast-subject")
        contrasts: list[str | None] = [args.contrast or ""]
        return [fact], corruption, [args.contrast_subject] if corruption == "swap" else None, contrasts
    if args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    facts = read_facts(args.data)
    if args.relation:
        facts = [f for f in facts if f.relation_id == args.relation]
        if not facts:
            raise ValueError(f"no facts with relation {args.relation!r} in {args.data or 'the bundled facts'}")
    if not facts:
        raise ValueError(f"no facts in {args.data or 'the bundled facts'}")
    corruption = "swap" if args.corruption == "auto" else args.corruption
    return facts[: args.limit], corruption, None, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.circuits.batches import make_batch
    from knowscope.circuits.circuit import knowledge_circuit

    if args.ig_steps < 1:
        raise ValueError(f"--ig-steps must be >= 1, got {args.ig_steps}")
    if args.top_n is not None and args.top_n < 1:
        raise ValueError(f"--top-n must be >= 1, got {args.top_n}")
    if args.max_edges_json < 0:
        raise ValueError(f"--max-edges-json must be >= 0, got {args.max_edges_json}")
    start = time.perf_counter()
    facts, corruption, contrast_subjects, contrasts = _facts(args)
    model = load_from_args(args)
    pool = None
    if args.data and corruption == "swap":
        pool = read_facts(args.data)
    batch = make_batch(model, facts, corruption, contrast_subjects=contrast_subjects, contrasts=contrasts,
                       pool=pool, seed=args.seed)
    metric = args.metric
    if metric == "auto":
        metric = "logit_diff" if bool((batch.contrast >= 0).all()) else "logprob"
    circuit = knowledge_circuit(model, batch, method=args.method, ig_steps=args.ig_steps, metric=metric,
                                top_n=args.top_n, target_faithfulness=args.target_faithfulness, seed=args.seed,
                                step=stage)
    seconds = time.perf_counter() - start
    if args.out:
        circuit.meta["seconds"] = seconds
        circuit.save(args.out)
    print(f"{args.method} on {batch.size} fact(s), metric {metric}, corruption {corruption}")
    print(f"metric clean {circuit.metric_clean:.3f}  corrupted {circuit.metric_corrupted:.3f}  "
          f"circuit {circuit.metric_circuit:.3f}")
    print(f"circuit: {circuit.n_edges} of {circuit.n_edges_total} edges "
          f"({100 * circuit.n_edges / circuit.n_edges_total:.2f}%), faithfulness {circuit.faithfulness:.3f}")
    for row in circuit.edges()[:10]:
        print(f"  {row['source']:>8} -> {row['target']:<12} {row['score']:+.4f}")
    if args.out:
        print(f"saved {args.out}")
    out = circuit.to_dict(max_edges=args.max_edges_json)
    out.update({"model": model.name, "seconds": seconds, "metric": metric, "corruption": corruption})
    return out
