"""Probes on the default model: where bundled facts surface in the logit and tuned lens, and a steering sweep.

* ``lens``: the tuned lens trained with its defaults (or loaded from the cache: time and token
  count as recorded at training), its held-out KL(final ‖ lens) and top-1 agreement per layer
  beside the logit lens's; then for each bundled fact and each lens, the first layer at which the
  true object is top-1 (top-5) at the last position: the share of facts where that happens before
  the last layer, and the median layer;
* ``lens-curve``: held-out KL of the tuned lens against the number of training tokens (the
  evidence for the default token count);
* ``steering``: SafetyLock-style per-head directions fitted on half of the bundled safety items;
  for each α, the share of the other half's adversarial prompts answered safely (offline judge)
  and the bundled-fact accuracy, with the steering baked into the attention output bias.

Prints tables and writes ``benchmarks/results/bench_probes.json``.

    python benchmarks/bench_probes.py
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from knowscope.facts import load_bundled_facts, write_json_atomic
from knowscope.models import load_model
from knowscope.probes import fact_readout, fit_safety_steering, steering_sweep, tuned_lens
from knowscope.probes.tuned_lens import DEFAULT_STEPS, DEFAULT_TRAIN_TOKENS
from knowscope.safeedit import load_bundled_safety

RESULTS = Path(__file__).parent / "results"


def bench_lens(model: Any, facts: list[Any]) -> dict[str, Any]:
    t = time.perf_counter()
    tuned = tuned_lens(model)
    q = tuned.quality
    print(f"\ntuned lens: {tuned.meta['train_tokens']} training tokens, {tuned.meta['held_out_tokens']} held out, "
          f"{tuned.meta['settings']['steps']} steps; trained in {tuned.meta['seconds_total']:.0f}s "
          f"({'loaded from the cache' if tuned.meta.get('from_cache') else 'this run'})")
    print(q.table())
    worse = q.layers_not_better()
    print(f"layers (but the last) where the tuned lens's held-out KL is not below the logit lens's: {worse or 'none'}")
    out: dict[str, Any] = {"train_tokens": tuned.meta["train_tokens"], "held_out_tokens": tuned.meta["held_out_tokens"],
                           "settings": tuned.meta["settings"], "train_seconds": tuned.meta["seconds_total"],
                           "train_seconds_collect": tuned.meta["seconds_collect"],
                           "train_seconds_fit": tuned.meta["seconds_train"], "quality": q.to_dict(),
                           "layers_not_better": worse, "loss_curve": tuned.meta["loss_curve"]}
    print(f"\n{'lens':<6} {'top-1 before last':>18} {'top-5 before last':>18} {'median first top-1':>19}")
    for name, reader in (("logit", None), ("tuned", tuned)):
        t = time.perf_counter()
        r = fact_readout(model, facts, tuned=reader)
        r["seconds_per_fact"] = (time.perf_counter() - t) / len(facts)
        out[name] = r
        print(f"{name:<6} {r['share_top1_before_last']:>18.3f} {r['share_top5_before_last']:>18.3f} "
              f"{str(r['median_first_top1_layer']):>19}")
    out["n_facts"] = len(facts)
    return out


def bench_lens_curve(model: Any, token_counts: list[int], steps: int) -> dict[str, Any]:
    """Held-out KL (mean over layers but the last) against training tokens, same steps and held-out set."""
    rows = []
    print(f"\n{'train tokens':>12} {'mean KL':>8} {'KL L5':>7} {'KL L15':>7} {'KL L25':>7} {'seconds':>8}")
    for n in token_counts:
        lens = tuned_lens(model, n_tokens=n, steps=steps)
        q = lens.quality
        mean = statistics.fmean(q.kl_tuned[:-1])
        rows.append({"train_tokens": n, "steps": steps, "mean_kl": mean, "kl_by_layer": q.kl_tuned,
                     "mean_top1": statistics.fmean(q.top1_tuned[:-1]), "seconds": lens.meta["seconds_total"]})
        print(f"{n:>12} {mean:>8.3f} {q.kl_tuned[5]:>7.3f} {q.kl_tuned[15]:>7.3f} {q.kl_tuned[25]:>7.3f} "
              f"{lens.meta['seconds_total']:>8.0f}")
    return {"rows": rows, "logit_mean_kl": statistics.fmean(q.kl_logit[:-1])}


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
    ap.add_argument("--only", default="lens,steering", help="any of lens, lens-curve, steering")
    ap.add_argument("--curve-tokens", default="2048,4096,8192,16384,32768")
    ap.add_argument("--curve-steps", type=int, default=DEFAULT_STEPS)
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
    out = Path(args.out)
    # sections not run this time keep their previous numbers
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"model": model.name, "fingerprint": model.fingerprint, "torch_threads": torch.get_num_threads(),
                   "argv": sys.argv[1:], "default_train_tokens": DEFAULT_TRAIN_TOKENS})
    only = set(args.only.split(","))
    if "lens" in only:
        report["lens"] = bench_lens(model, facts)
    if "lens-curve" in only:
        report["lens_curve"] = bench_lens_curve(model, [int(x) for x in args.curve_tokens.split(",")],
                                                args.curve_steps)
    if "steering" in only:
        report["steering"] = bench_steering(model, [float(a) for a in args.alphas.split(",")], args.top_k,
                                            facts[::4], args.max_new_tokens)
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
