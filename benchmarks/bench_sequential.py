"""500 sequential edits on the default model: plain MEMIT vs the null-space mode, batch by batch (issue #19).

Facts: the bundled extended set (``scripts/build_facts.py``). First ``--probe`` facts spread over the
relations are held back as the collapse monitor's probe and never edited (nor is any other fact about
their subjects); the next ``--edits`` facts spread over the relations are edited in batches of
``--batch``. Each mode (``--modes``: ``memit`` = plain MEMIT, ``null_space`` = AlphaEdit's projected
update, both with :meth:`MEMITHyperParams.for_model` defaults) runs through
:func:`knowscope.editing.sequential.run_sequential` into ``--store/<mode>``, saved after every batch.
The modes advance in turn, one batch each, so a stopped run (``--max-minutes``, or a session that
ends) leaves them level, and a re-run continues both from their last finished batch.

After every batch the monitor records: efficacy over all edits so far, retention of the first batch,
on the never-edited probe the CounterFact neighbourhood score and EasyEdit locality (prompts that
name an edited subject left out), the probe facts' own top-1 accuracy, fluency (n-gram entropy of
generations from 4 probe prompts), and the accumulated update norm ‖W − W₀‖/‖W₀‖ of each edited
weight. Printed side by side per batch and written to ``benchmarks/results/bench_sequential.json``
with the acceptance checks of #19.

    python benchmarks/bench_sequential.py --max-minutes 60     # again to continue
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.sequential import CollapseMonitor, SequentialRun, run_sequential
from knowscope.facts import Fact, load_bundled_facts, write_json_atomic
from knowscope.models import load_model
from knowscope.sweep.grid import spread

RESULTS = Path(__file__).parent / "results"
MODES = ("memit", "null_space")


def choose_facts(n_edits: int, n_probe: int) -> tuple[list[Fact], list[Fact]]:
    """``(edits, probe)`` from the extended set, both spread over the relations, no subject in both."""
    facts = load_bundled_facts(name="extended")
    probe = spread(facts, n_probe)
    held = {f.subject for f in probe}
    rest = [f for f in facts if f.subject not in held]
    if len(rest) < n_edits:
        raise SystemExit(f"only {len(rest)} facts name a subject outside the probe; asked for {n_edits} edits")
    return spread(rest, n_edits), probe


def rows_of(run: SequentialRun) -> list[dict[str, Any]]:
    out = []
    for r in run.records:
        s = r["signals"]
        out.append({"edits": r["edits"], "seconds": r["seconds"], "efficacy_all": s.get("efficacy_all"),
                    "retention_first": s.get("retention_first"), "neighborhood": s.get("neighborhood"),
                    "locality": s.get("locality"), "probe_accuracy": s.get("probe_accuracy"),
                    "fluency": s.get("fluency"),
                    "max_update_norm": max(s["update_norm"].values()) if s.get("update_norm") else 0.0,
                    "warnings": r.get("warnings", [])})
    return out


def checks(curves: dict[str, list[dict[str, Any]]], n_edits: int) -> dict[str, Any]:
    """#19's acceptance points, on what has been measured so far."""
    ns, plain = curves.get("null_space", []), curves.get("memit", [])
    out: dict[str, Any] = {"batches_measured": {m: len(r) - 1 for m, r in curves.items()}}
    if len(ns) > 1:
        base, last = ns[0], ns[-1]
        out["null_space_after_last_batch"] = {
            "edits": last["edits"], "complete": last["edits"] >= n_edits,
            "efficacy_all>=0.95": last["efficacy_all"] >= 0.95,
            "retention_first>=0.95": last["retention_first"] >= 0.95,
            "neighborhood_within_0.10": base["neighborhood"] - last["neighborhood"] <= 0.10,
            "fluency_within_5%": last["fluency"] is None or last["fluency"] >= 0.95 * base["fluency"],
        }
        out["null_space_first_batch_locality>=0.7"] = ns[1]["locality"] >= 0.7
    level = min(len(ns), len(plain))
    if level > 1:
        gaps = [ns[i]["neighborhood"] - plain[i]["neighborhood"] for i in range(1, level)]
        out["null_space_never_below_plain_neighborhood"] = all(g >= 0 for g in gaps)
        out["neighborhood_gap_per_batch"] = gaps
    return out


def print_curves(curves: dict[str, list[dict[str, Any]]]) -> None:
    def f(x: Any) -> str:
        return "    -" if x is None else f"{x:.3f}"

    print(f"\n{'mode':>10} {'edits':>5} {'eff all':>7} {'eff 1st':>7} {'neigh':>6} {'local':>6} {'p.acc':>6} "
          f"{'fluency':>7} {'max dW':>6} {'s':>5}")
    for mode, rows in curves.items():
        for r in rows:
            print(f"{mode:>10} {r['edits']:>5} {f(r['efficacy_all']):>7} {f(r['retention_first']):>7} "
                  f"{f(r['neighborhood']):>6} {f(r['locality']):>6} {f(r['probe_accuracy']):>6} "
                  f"{f(r['fluency']):>7} {f(r['max_update_norm']):>6} {r['seconds']:>5.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edits", type=int, default=500)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--probe", type=int, default=50)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--store", default="runs/bench_sequential500", help="run folders, one per mode (resumable)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new batch after this long")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_sequential.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes takes a comma-separated subset of {', '.join(MODES)}")
    model = load_model(device="cpu")
    hp = MEMITHyperParams.for_model(model)
    edits, probe = choose_facts(args.edits, args.probe)
    n_batches = -(-len(edits) // args.batch)
    t0 = time.perf_counter()
    runs: dict[str, SequentialRun] = {}

    def step(mode: str) -> SequentialRun:
        monitor = CollapseMonitor(probe=probe, fluency_prompts=4)
        return run_sequential(model, edits, args.batch, Path(args.store) / mode, null_space=mode == "null_space",
                              hparams=hp, monitor=monitor, max_batches=1)

    def report() -> dict[str, Any]:
        curves = {m: rows_of(r) for m, r in runs.items()}
        out = {"model": model.name, "fingerprint": model.fingerprint, "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:], "batch": args.batch,
               "n_edits": len(edits), "n_probe": len(probe), "hparams": hp.to_dict(),
               "probe_relations": sorted({f.relation_id for f in probe}),
               "edit_relations": sorted({f.relation_id for f in edits}), "curves": curves,
               "checks": checks(curves, len(edits))}
        write_json_atomic(args.out, out)
        return out

    for mode in modes:  # what earlier calls finished
        if (Path(args.store) / mode / "state").exists():
            runs[mode] = SequentialRun.load(Path(args.store) / mode)

    def batches_done(mode: str) -> int:
        return len(runs[mode].records) - 1 if mode in runs else 0

    while True:
        progressed = False
        for mode in modes:
            done = batches_done(mode)
            if done >= n_batches or done > min(batches_done(m) for m in modes):
                continue  # finished, or ahead of another mode: let it catch up first
            if args.max_minutes is not None and time.perf_counter() - t0 > 60 * args.max_minutes:
                break
            runs[mode] = step(mode)
            progressed = progressed or batches_done(mode) > done
            rec = runs[mode].records[-1]
            print(f"{mode}: {rec['edits']} edits, batch {rec['seconds']:.0f}s, "
                  f"{time.perf_counter() - t0:.0f}s in this call", flush=True)
            report()
        if not progressed:
            break
    out = report()
    print_curves(out["curves"])
    print(json.dumps(out["checks"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
