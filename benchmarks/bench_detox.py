"""DINM on the default model over the bundled SafeEdit-format set: seconds per edit and SafeEdit metrics.

Each item is located (its own toxic layer), edited, scored on its five inputs and undone; bundled-fact
accuracy is checked after every edit. Also reports the offline judge's accuracy on its labelled set.
Prints a table and writes ``benchmarks/results/bench_detox.json``.

The whole set takes about an hour on a 2-core CPU, so each item's row is saved as it finishes under
``runs/bench_detox/`` (keyed by the settings); a re-run with the same settings continues where the
last one stopped. ``--fresh`` starts over.

    python benchmarks/bench_detox.py --limit 8     # a few items
    python benchmarks/bench_detox.py               # the whole bundled set

``--sweep LAYERS`` instead edits every chosen item at each of the given layers (``every3``: 2, 5, ..., 29;
``all``; or ``2,14,29``) plus the layer the held-out probe locator picks, and reports per layer DS and
the over-refusal rate on the bundled benign set (``benchmarks/detox_sweep.py``), with the locator's
profile and its controls. It writes ``benchmarks/results/bench_detox_sweep.json``; ``--items`` picks
the items (a stride over the bundled set), ``--budget`` stops after so many seconds (run it again to
continue), ``--exact`` sweeps only the layers given, ``--hparams`` overrides DINM's settings (a tuning run).

    python benchmarks/bench_detox.py --sweep every3 --items 8 --budget 540
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from knowscope.editing.dinm import DINMHyperParams
from knowscope.facts import load_bundled_facts, write_json_atomic
from knowscope.models import load_model
from knowscope.safeedit import load_bundled_safety
from knowscope.safety.judge import validate_judge
from knowscope.safety.metrics import detox, detox_metrics

RESULTS = Path(__file__).parent / "results"
PARTIAL = Path(__file__).resolve().parents[1] / "runs" / "bench_detox"


def rejudge(src: Path, out: Path) -> int:
    """Recompute DS / DG_* of a saved report from its stored responses with the current offline judge."""
    from knowscope.safety.judge import RefusalJudge
    from knowscope.safety.metrics import EMPTY_RESPONSE_SCORE, INPUT_KINDS

    report = json.loads(src.read_text())
    judge = RefusalJudge()
    for row in report["rows"]:
        for side in ("before", "after"):
            resp = row[side]["responses"]
            verdicts = judge.judge([resp[k] for k in INPUT_KINDS])
            row[side]["safe"] = {k: EMPTY_RESPONSE_SCORE if not resp[k].strip() else float(v)
                                 for k, v in zip(INPUT_KINDS, verdicts, strict=True)}
    for side in ("before", "after"):
        for k in INPUT_KINDS:
            report["metrics"][side][k] = statistics.mean(float(r[side]["safe"][k]) for r in report["rows"])
    report["judge_validation"] = {k: v for k, v in validate_judge(judge).items() if k != "errors"}
    report["rejudged_from"] = str(src)
    print_table(report)
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    print(f"{'metric':>16} {'before':>8} {'after':>8}")
    for k in before:
        print(f"{k:>16} {before[k]:>8.3f} {after.get(k, float('nan')):>8.3f}")


def _by_id(items: list[Any], spec: str) -> list[Any]:
    """The ``items`` with the ids in ``spec`` ("1,22,36"), in that order (e.g. a held-out split)."""
    by_id = {it.id: it for it in items}
    return [by_id[int(x)] for x in spec.split(",")]


def _sweep_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    if spec == "every3":
        return list(range(n_layers - 1, -1, -3))[::-1]
    return [int(x) for x in spec.split(",")]


def run_sweep(model: Any, args: argparse.Namespace) -> int:
    """The per-layer sweep (see the module docstring); resumable; prints a table, writes JSON."""
    from detox_sweep import print_table, sweep, table

    from knowscope.circuits import locate_toxic, locate_toxic_layers
    from knowscope.safety.refusal import first_per_category, load_bundled_benign

    every = load_bundled_safety()
    items = _by_id(every, args.item_ids) if args.item_ids else every[:: max(1, len(every) // args.items)][: args.items]
    saved = PARTIAL / f"locator_{model.fingerprint}.json"  # computed once, reused by a resumed run
    earlier = RESULTS / "bench_detox_sweep.json"  # or the one the first sweep recorded (same model)
    if not saved.exists() and earlier.exists() and json.loads(earlier.read_text()).get("fingerprint") == \
            model.fingerprint:
        first = json.loads(earlier.read_text())
        write_json_atomic(saved, {"location": first["locator"], "seconds": first["locator_seconds"]})
    if saved.exists():
        found = json.loads(saved.read_text())
    else:
        t0 = time.perf_counter()
        location = locate_toxic_layers(model, every)  # over the whole bundled set
        found = {"location": location.to_dict(), "seconds": time.perf_counter() - t0}
        write_json_atomic(saved, found)
    loc = found["location"]
    # DINM's default per swept item (not needed for --exact; skipped there to save its forward passes)
    found["pair_l2_layers"] = None if args.exact else [locate_toxic(model, it).layer for it in items]
    last = model.arch.n_layers - 1  # where the single-pair l2 locator puts every item
    rest = [x for x in _sweep_layers(args.sweep, model.arch.n_layers) if x not in (loc["layer"], last)]
    layers = [loc["layer"], last, *rest]  # the probe's layer and the last first: a stopped run has both
    if args.exact:
        layers = _sweep_layers(args.sweep, model.arch.n_layers)  # exactly the layers asked for
    hp = DINMHyperParams.for_model(model, **json.loads(args.hparams))
    print(f"probe locator: layer {loc['layer']} (ranking {loc['ranking']}), controls' layers "
          f"{loc['control_layers']}; single-pair l2 layers {sorted(set(found['pair_l2_layers'] or []))}", flush=True)
    benign = load_bundled_benign()
    if args.benign_per_category:
        benign = first_per_category(benign, args.benign_per_category)
    state = sweep(model, items, layers, benign, hp, PARTIAL, max_new_tokens=args.max_new_tokens,
                  benign_tokens=args.benign_tokens, budget_s=args.budget)
    rows = table(state)
    print_table(rows)
    out = {"model": model.name, "fingerprint": model.fingerprint, "torch_threads": torch.get_num_threads(),
           "argv": sys.argv[1:], "complete": bool(state.get("complete")), "items": [it.id for it in items],
           "hparams": hp.to_dict(), "max_new_tokens": args.max_new_tokens, "benign_tokens": args.benign_tokens,
           "n_benign": len(state["settings"]["benign"]), "locator": loc,
           "locator_seconds": found["seconds"], "pair_l2_layers": found["pair_l2_layers"], "table": rows,
           "before": state["before"], "cells": state["cells"], "sweep_seconds": state["seconds"]}
    path = Path(args.out if args.out != str(RESULTS / "bench_detox.json") else RESULTS / "bench_detox_sweep.json")
    write_json_atomic(path, out)
    print(f"wrote {path}" + ("" if out["complete"] else " (partial: run again to continue)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="first N items (default: all)")
    ap.add_argument("--facts", type=int, default=54, help="bundled facts checked after each edit")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--hparams", default="{}", help="JSON overrides of DINMHyperParams")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_detox.json"))
    ap.add_argument("--fresh", action="store_true", help="ignore a saved partial run with the same settings")
    ap.add_argument("--sweep", default=None, metavar="LAYERS", help="per-layer sweep: every3, all or 2,14,29")
    ap.add_argument("--items", type=int, default=8, help="sweep: this many items, spread over the bundled set")
    ap.add_argument("--item-ids", default=None, help="these item ids instead of --limit / --items (e.g. 1,22,36,50)")
    ap.add_argument("--benign-tokens", type=int, default=24, help="sweep: tokens per benign response")
    ap.add_argument("--benign-per-category", type=int, default=None,
                    help="sweep: the first N benign prompts of each category (default: all 80)")
    ap.add_argument("--budget", type=float, default=None, help="sweep: stop after this many seconds")
    ap.add_argument("--exact", action="store_true",
                    help="sweep: only the layers given (not also the probe's layer and the last)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="read sweep reports of the same settings over different layers as one table (to --out)")
    ap.add_argument("--rejudge", metavar="JSON", default=None,
                    help="re-score the responses saved in a report with the current judge (no model run)")
    args = ap.parse_args(argv)
    if args.rejudge:
        return rejudge(Path(args.rejudge), Path(args.out))
    if args.merge:
        from detox_sweep import merge
        from detox_sweep import print_table as print_sweep

        merged = merge([json.loads(Path(p).read_text()) for p in args.merge])
        print_sweep(merged["table"])
        write_json_atomic(Path(args.out), merged)
        print(f"wrote {args.out}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    if args.sweep:
        return run_sweep(model, args)
    bundled = load_bundled_safety()
    items = _by_id(bundled, args.item_ids) if args.item_ids else bundled[: args.limit]
    every = load_bundled_facts()
    facts = every[:: max(1, len(every) // args.facts)][: args.facts]
    hp = DINMHyperParams.for_model(model, **json.loads(args.hparams))

    settings = {"fingerprint": model.fingerprint, "items": [it.id for it in items],
                "facts": [f.case_id for f in facts], "hparams": hp.to_dict(), "max_new_tokens": args.max_new_tokens,
                "threads": torch.get_num_threads()}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    partial = PARTIAL / f"{key}.json"
    state = {"settings": settings, "rows": [], "before_facts_accuracy": None, "seconds": 0.0}
    if partial.exists() and not args.fresh:
        state = json.loads(partial.read_text())
        print(f"resuming {partial}: {len(state['rows'])}/{len(items)} items done", flush=True)

    for i in range(len(state["rows"]), len(items)):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        rep = detox(model, items[i : i + 1], facts=facts, hparams=hp, max_new_tokens=args.max_new_tokens)
        row = {k: v for k, v in rep.rows[0].items() if k != "loss_history"}
        state["rows"].append(row)
        state["before_facts_accuracy"] = rep.before.get("facts_accuracy")
        state["seconds"] += time.perf_counter() - t0
        write_json_atomic(partial, state)  # one finished item at a time: a stopped run loses at most one
        b, a = row["before"]["safe"], row["after"]["safe"]
        print(f"  {i + 1}/{len(items)} item {row['item_id']} layer {row['layer']}: "
              f"safe inputs {sum(b.values())}/5 -> {sum(a.values())}/5, facts {row['after']['facts_accuracy']:.3f}, "
              f"edit {row['edit_seconds']:.1f}s", flush=True)

    rows = state["rows"]
    before, after = detox_metrics(rows, state["before_facts_accuracy"])
    total = state["seconds"]
    edit_secs = [r["edit_seconds"] for r in rows]
    toxic_layers = [r["layer"] for r in rows]
    judge = validate_judge()
    out = {
        "model": model.name, "fingerprint": model.fingerprint, "device": str(model.device),
        "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:], "n_items": len(items),
        "n_facts": len(facts), "hparams": hp.to_dict(), "max_new_tokens": args.max_new_tokens,
        "metrics": {"before": before, "after": after},
        "toxic_layers": toxic_layers,
        "seconds_per_dinm_edit": statistics.mean(edit_secs), "seconds_per_item_total": total / len(items),
        "judge_validation": {k: v for k, v in judge.items() if k != "errors"},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    print(f"\nDINM over {len(items)} items ({len(facts)} facts checked per edit), toxic layers "
          f"{sorted(set(toxic_layers))}")
    print_table(out)
    print(f"seconds per DINM edit {out['seconds_per_dinm_edit']:.1f} (locate + {hp.num_steps} steps); "
          f"per item with evaluation {out['seconds_per_item_total']:.1f}")
    print(f"offline judge: accuracy {judge['accuracy']:.3f} on {judge['n']} labelled responses")
    path = Path(args.out)
    write_json_atomic(path, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
