"""Causal tracing speed and quality on the default model: reference loop vs fast path vs attribution.

For each fact, the three methods run at identical settings (same prompt, kinds, samples, noise draws,
window). Reported per method: seconds per fact, forward passes, peak memory (CUDA peak allocated on a
GPU, else the growth of the process's max RSS), the speedup over the reference, the max abs
difference from the reference (fast must be ~0), and attribution's Pearson correlation with the
exact scores. Prints a table and writes JSON under benchmarks/results/.

    python benchmarks/bench_tracing.py                      # full setting: 3 facts, 10 samples, 3 kinds
    python benchmarks/bench_tracing.py --facts 1 --samples 5 --kinds mlp
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from knowscope.circuits import trace
from knowscope.facts import Fact, load_bundled_facts
from knowscope.models import load_model

FALLBACK = [
    Fact(subject="Mexico", prompt="The official language of {} is", target_true="Spanish", target_new="French"),
    Fact(subject="Eiffel Tower", prompt="The {} is located in the city of", target_true="Paris", target_new="Rome"),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="golf"),
]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_method(model, fact: Fact, method: str, kinds, samples: int, seed: int) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    r = trace(model, fact.text, fact.subject, target=fact.true_continuation, kinds=kinds, samples=samples,
              seed=seed, method=method)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else _rss_mb() - rss0
    return {"result": r, "seconds": seconds, "forward_passes": r.forward_passes, "peak_mem_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=3)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--kinds", default="hidden,mlp,attn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_tracing.json"))
    args = ap.parse_args()

    model = load_model(device=None)
    facts = load_bundled_facts() or FALLBACK
    facts = facts[: args.facts]
    kinds = tuple(args.kinds.split(","))
    methods = ["fast", "attribution"] + ([] if args.skip_reference else ["reference"])
    rows = []
    for fact in facts:
        runs = {m: run_method(model, fact, m, kinds, args.samples, args.seed) for m in methods}
        exact = runs["reference"]["result"] if "reference" in runs else runs["fast"]["result"]
        for m, run in runs.items():
            r = run["result"]
            diffs, corrs = [], []
            for k in kinds:
                a, e = r.scores[k].flatten(), exact.scores[k].flatten()
                diffs.append(float((a - e).abs().max()))
                corrs.append(float(torch.corrcoef(torch.stack([a, e]))[0, 1]))
            rows.append({
                "fact": fact.text, "tokens": len(r.tokens), "method": m, "seconds": run["seconds"],
                "forward_passes": run["forward_passes"], "peak_mem_mb": run["peak_mem_mb"],
                "max_abs_diff_vs_exact": max(diffs), "corr_vs_exact": sum(corrs) / len(corrs),
                "low_score": r.low_score, "high_score": r.high_score,
            })
        ref_s = runs["reference"]["seconds"] if "reference" in runs else float("nan")
        for row in rows[-len(runs):]:
            row["speedup_vs_reference"] = ref_s / row["seconds"]

    summary = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        summary[m] = {
            "seconds_per_fact": sum(r["seconds"] for r in mine) / len(mine),
            "forward_passes_per_fact": sum(r["forward_passes"] for r in mine) / len(mine),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in mine),
            "speedup_vs_reference": sum(r["speedup_vs_reference"] for r in mine) / len(mine),
            "max_abs_diff_vs_exact": max(r["max_abs_diff_vs_exact"] for r in mine),
            "corr_vs_exact": sum(r["corr_vs_exact"] for r in mine) / len(mine),
        }
    print(f"causal tracing on {model.name} ({model.device}), {len(facts)} facts, kinds={','.join(kinds)}, "
          f"samples={args.samples}")
    print(f"{'method':<12} {'s/fact':>9} {'passes':>8} {'peak MB':>9} {'speedup':>8} {'max|diff|':>10} {'corr':>6}")
    for m, s in summary.items():
        print(f"{m:<12} {s['seconds_per_fact']:>9.1f} {s['forward_passes_per_fact']:>8.0f} {s['peak_mem_mb']:>9.0f} "
              f"{s['speedup_vs_reference']:>8.1f} {s['max_abs_diff_vs_exact']:>10.2e} {s['corr_vs_exact']:>6.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.name, "device": str(model.device), "machine": platform.platform(),
               "cpu_threads": torch.get_num_threads(), "settings": vars(args), "summary": summary, "rows": rows}
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
