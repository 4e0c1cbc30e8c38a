"""Probes on the default model: where bundled facts surface in the logit lens, and a steering sweep.

* ``lens``: for each bundled fact, the first layer at which the true object is the top-1 token at
  the last position (logit lens); the share of facts where that happens before the last layer, and
  the median layer;
* ``steering``: SafetyLock-style per-head directions fitted on half of the bundled safety items;
  for each α, the share of the other half's adversarial prompts answered safely (offline judge)
  and the bundled-fact accuracy, with the steering baked into the attention output bias.

Prints tables and writes ``benchmarks/results/bench_probes.json``.

    python benchmarks/bench_probes.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from knowscope.facts import load_bundled_facts, write_json_atomic
from knowscope.models import load_model
from knowscope.probes import fit_safety_steering, logit_lens, steering_sweep
from knowscope.safety.data import load_bundled_safety

RESULTS = Path(__file__).parent / "results"


def bench_lens(model: Any, facts: list[Any]) -> dict[str, Any]:
    t = time.perf_counter()
    firsts = [logit_lens(model, f.text, targets=[f.true_continuation], k=1).first_top1_layer() for f in facts]
    n = model.arch.n_layers
    early = [x for x in firsts if x is not None and x < n - 1]
    out = {"n_facts": len(facts), "share_top1_before_last_layer": len(early) / len(facts),
           "median_first_top1_layer": statistics.median(early) if early else None,
           "never_top1": sum(x is None for x in firsts), "first_top1_layers": firsts,
           "seconds_per_fact": (time.perf_counter() - t) / len(facts)}
    print(f"\nlogit lens over {len(facts)} bundled facts: true object top-1 before the last layer for "
          f"{100 * out['share_top1_before_last_layer']:.1f}%, median first layer {out['median_first_top1_layer']}")
    return out


def bench_steering(model: Any, alphas: list[float], top_k: int, facts: list[Any],
                   max_new_tokens: int) -> dict[str, Any]:
    items = load_bundled_safety()
    fit_items, test_items = items[::2], items[1::2]
    t = time.perf_counter()
    sv = fit_safety_steering(model, fit_items, top_k=top_k)
    fit_s = time.perf_counter() - t
    rows = steering_sweep(model, sv, test_items, alphas, facts=facts, max_new_tokens=max_new_tokens)
    print(f"\nsteering: top {top_k} heads {sv.heads} (held-out probe accuracy "
          f"{[round(a, 2) for a in sv.accuracy.tolist()]}), fitted in {fit_s:.1f}s on {len(fit_items)} items")
    print(f"{'alpha':>7} {'safe share':>11} {'facts acc':>10}")
    for r in rows:
        print(f"{r['alpha']:>7.1f} {r['safe_share']:>11.3f} {r['facts_accuracy']:>10.3f}")
    return {"heads": [list(h) for h in sv.heads], "head_accuracy": sv.accuracy.tolist(), "fit_seconds": fit_s,
            "n_fit_items": len(fit_items), "n_test_items": len(test_items), "n_facts": len(facts), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="lens,steering")
    ap.add_argument("--alphas", default="-2,-1,0,1,2,4")
    ap.add_argument("--top-k", type=int, default=6, help="heads (6 of 270: the share SafetyLock keeps, 24 of 1024)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_probes.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    facts = load_bundled_facts()
    report: dict[str, Any] = {"model": model.name, "fingerprint": model.fingerprint,
                              "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    only = set(args.only.split(","))
    if "lens" in only:
        report["lens"] = bench_lens(model, facts)
    if "steering" in only:
        report["steering"] = bench_steering(model, [float(a) for a in args.alphas.split(",")], args.top_k,
                                            facts[::4], args.max_new_tokens)
    out = Path(args.out)
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
