"""Does locating inform editing on the default model? Layer sweeps of ROME and MEMIT, on Ray.

Sections (``--only`` picks some):

* ``scaling``: the same cells (the first ``--scaling-facts`` facts at ``--scaling-layers``) run into
  two fresh stores with 1 and with 2 Ray workers (torch threads = cores / workers, so both use the
  whole machine): wall seconds, steady-state cells/s (first to last stored cell) and the ratio;
* ``rome``: ``--facts`` bundled facts spread over the relations × every layer, ROME defaults;
* ``memit``: the same facts × MEMIT windows (width 5) centred at ``--memit-layers``.

The grids take hours on a 2-core CPU: each runs into its store under ``benchmarks/results/sweeps/``
(committed with the results, so a later session on a fresh checkout continues it) and a re-run
continues it (``--max-minutes`` stops starting new cells after that long, so a session can end
cleanly). The scaling stores are scratch, under ``runs/bench_sweep/``. The JSON
(``benchmarks/results/bench_sweep.json``) and the printed tables summarise what the stores hold so
far: per layer mean success and tracing effect, rank correlations, best vs located layer, the quality
lost at the located layer.

    python benchmarks/bench_sweep.py --only scaling
    python benchmarks/bench_sweep.py --only rome,memit --max-minutes 120     # again to continue
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from knowscope.facts import load_bundled_facts, write_json_atomic
from knowscope.models import DEFAULT_MODEL
from knowscope.sweep import SweepResult, SweepSpec, recommend_layer, run_sweep, spread
from knowscope.sweep.analysis import HEADLINE_METRICS

RESULTS = Path(__file__).parent / "results"
STORES = Path("runs") / "bench_sweep"  # scratch: the scaling section's fresh stores
GRID_STORES = RESULTS / "sweeps"  # the grids' stores: kept, so the grids resume across checkouts
#: the packaged table ``--layers auto`` reads (knowscope.editing.layers): written from finished grids only
MEASURED = Path(__file__).resolve().parent.parent / "knowscope" / "data" / "measured_layers.json"


def steady_rate(store: Path) -> float | None:
    """Cells per second between the first and the last stored cell (no start-up)."""
    with sqlite3.connect(store) as conn:
        times = sorted(r[0] for r in conn.execute("SELECT finished FROM cells"))
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 and times[-1] > times[0] else None


def bench_scaling(facts: list[Any], layers: str, workers: list[int]) -> dict[str, Any]:
    rows = []
    for n in workers:
        store = STORES / f"scaling-w{n}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        spec = SweepSpec(DEFAULT_MODEL, facts, methods=["rome"], layers=layers)
        t0 = time.perf_counter()
        rep = run_sweep(spec, store, workers=n, progress=False)
        wall = time.perf_counter() - t0
        rows.append({"workers": n, "cells": rep.n_run, "traces": rep.n_traces_run, "wall_seconds": wall,
                     "cells_per_second_wall": rep.n_run / wall, "cells_per_second_steady": steady_rate(store),
                     "mean_cell_seconds": _mean_cell_seconds(store)})
    base = rows[0]["cells_per_second_steady"]
    for r in rows:
        r["speedup_steady"] = r["cells_per_second_steady"] / base if base and r["cells_per_second_steady"] else None
    return {"facts": len(facts), "layers": layers, "rows": rows}


def _mean_cell_seconds(store: Path) -> float:
    with sqlite3.connect(store) as conn:
        return float(conn.execute("SELECT AVG(seconds) FROM cells").fetchone()[0])


def bench_grid(name: str, spec: SweepSpec, workers: int, max_minutes: float | None) -> dict[str, Any]:
    store = GRID_STORES / f"{name}.sqlite"
    store.parent.mkdir(parents=True, exist_ok=True)
    rep = run_sweep(spec, store, workers=workers, max_seconds=None if max_minutes is None else 60 * max_minutes)
    res = SweepResult.load(store)
    out = {"store": str(store), "report": rep.to_dict(), "n_cells_planned": rep.n_cells,
           "n_cells_stored": len(res.cells), "finished": len(res.cells) == rep.n_cells,
           "steady_cells_per_second": steady_rate(store), "settings": res.settings,
           "summary": res.to_dict()["methods"]}
    return out


def record_measured(store: Path, method: str) -> dict[str, Any]:
    """Write ``method``'s best layer from a finished grid into the packaged table ``--layers auto`` reads."""
    res = SweepResult.load(store)
    rec = recommend_layer(res, method)
    table = json.loads(MEASURED.read_text()) if MEASURED.is_file() else {
        "version": 1, "about": "best edit layer per model (weight fingerprint) and method, measured by "
                               "benchmarks/bench_sweep.py; read by knowscope.editing.layers for layers='auto'"}
    model = table.setdefault("models", {}).setdefault(res.settings["fingerprint"], {"model": res.settings["model"]})
    entry = {"layer": rec.layer, "metric": rec.metric, "value": round(rec.value, 4),
             "located_layer": rec.located_layer,
             "located_value": None if rec.located_value is None else round(rec.located_value, 4),
             "window": int(res.settings.get("window", 5)) if method == "memit" else 1,
             "n_facts": rec.n_facts, "n_cells": sum(c["method"] == method for c in res.cells),
             "source": store.resolve().relative_to(MEASURED.parents[2]).as_posix()}
    model[method] = entry
    write_json_atomic(MEASURED, table)
    return entry


def at_located(entry: dict[str, Any], facts: list[Any], workers: int, max_minutes: float | None) -> None:
    """MEMIT's window centred on the located layer, when the grid's centres miss it: its own small store,
    and the quality lost there against the grid's best window (into ``entry["located_window"]``)."""
    s = entry["summary"]["memit"]
    located, best = s["located_layer"], s["best_layer"]
    if located is None or located in entry["settings"]["layers"]:
        return
    spec = SweepSpec(DEFAULT_MODEL, facts, methods=["memit"], layers=str(located), window=5)
    store = GRID_STORES / f"memit-{len(facts)}-located.sqlite"
    run_sweep(spec, store, workers=workers, max_seconds=None if max_minutes is None else 60 * max_minutes)
    row = SweepResult.load(store).by_layer("memit")[0]
    best_row = next(r for r in s["by_layer"] if r["layer"] == best)
    entry["located_window"] = {
        "store": store.resolve().relative_to(MEASURED.parents[2]).as_posix(), "layer": located, "row": row,
        "quality_lost": {m: None if best_row.get(m) is None or row.get(m) is None else best_row[m] - row[m]
                         for m in HEADLINE_METRICS}}
    table = json.loads(MEASURED.read_text())
    mine = table["models"].get(entry["settings"]["fingerprint"], {}).get("memit")
    if mine is not None and mine.get("located_layer") == located:
        mine["located_value"] = round(float(row["score"]), 4)
    write_json_atomic(MEASURED, table)
    print(f"\nmemit at the located layer {located} (window {row['layer'] - 2}-{row['layer'] + 2}, {row['n']} cells): "
          f"score {_f(row['score'])}; lost against the best window (centre {best}): "
          + ", ".join(f"{k} {_f(v)}" for k, v in entry["located_window"]["quality_lost"].items()))


def print_grid(name: str, entry: dict[str, Any]) -> None:
    for method, s in entry["summary"].items():
        print(f"\n{name}: {method.upper()} — {entry['n_cells_stored']} of {entry['n_cells_planned']} cells stored"
              f"{'' if entry['finished'] else ' (unfinished: run again to continue)'}")
        print(f"  located layer (locate, mean MLP effect) {s['located_layer']}, best layer by CounterFact score "
              f"{s['best_layer']}; lost at the located layer: "
              + ", ".join(f"{k} {_f(v)}" for k, v in s["quality_lost"].items()))
        print(f"  {'layer':>5} {'n':>4} {'score':>6} {'effic':>6} {'para':>6} {'neigh':>6} {'rewr':>6} {'loc':>6} "
              f"{'eff_mlp':>8} {'eff_hid':>8}")
        for r in s["by_layer"]:
            if r["n"]:
                print(f"  {r['layer']:>5} {r['n']:>4} {_f(r['score'])} {_f(r['efficacy_score'])} "
                      f"{_f(r['paraphrase_score'])} {_f(r['neighborhood_score'])} {_f(r['rewrite_score'])} "
                      f"{_f(r['locality_acc'])} {_f(r['effect_mlp'], 8)} {_f(r['effect_hidden'], 8)}")
        print(f"  Spearman rho, tracing effect vs success ({'pooled / per-fact mean / over layer means'}):")
        for kind, table in s["correlation_detail"].items():
            cells = "  ".join(f"{m} {_f(t['pooled'], 5)}/{_f(t['per_fact_mean'], 5)}/{_f(t['layer_means'], 5)}"
                              for m, t in table.items() if m in HEADLINE_METRICS)
            print(f"    {kind:>6}: {cells}")


def _f(x: float | None, w: int = 6) -> str:
    return f"{'n/a':>{w}}" if x is None else f"{x:>{w}.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="scaling,rome,memit")
    ap.add_argument("--facts", type=int, default=40, help="bundled facts, spread over the relations")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--memit-layers", default="2,5,8,11,14,17,20,23,26")
    ap.add_argument("--scaling-facts", type=int, default=2)
    ap.add_argument("--scaling-layers", default="0-29:3")
    ap.add_argument("--max-minutes", type=float, default=None, help="per grid: start no new cell after this long")
    ap.add_argument("--out", default=str(RESULTS / "bench_sweep.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(","))
    STORES.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    report: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    report.update({"model": DEFAULT_MODEL, "cpus": os.cpu_count(), "argv": sys.argv[1:]})
    facts = spread(load_bundled_facts(), args.facts)
    report["facts"] = {"n": len(facts), "relations": sorted({f.relation_id for f in facts}),
                       "case_ids": [f.case_id for f in facts]}
    if "scaling" in only:
        sc = bench_scaling(facts[: args.scaling_facts], args.scaling_layers, [1, args.workers])
        report["scaling"] = sc
        print(f"\nscaling ({sc['facts']} facts, layers {sc['layers']}):")
        for r in sc["rows"]:
            print(f"  {r['workers']} worker(s): {r['cells']} cells in {r['wall_seconds']:.0f} s wall, "
                  f"{r['cells_per_second_steady']:.4f} cells/s steady ({r['mean_cell_seconds']:.1f} s per cell "
                  f"per worker), speedup {_f(r['speedup_steady'])}")
        write_json_atomic(out_path, report)
    grids = {"rome": SweepSpec(DEFAULT_MODEL, facts, methods=["rome"], layers="all"),
             "memit": SweepSpec(DEFAULT_MODEL, facts, methods=["memit"], layers=args.memit_layers, window=5)}
    for name, spec in grids.items():
        if name in only:
            entry = bench_grid(f"{name}-{len(facts)}", spec, args.workers, args.max_minutes)
            report.setdefault("grids", {})[name] = entry
            if entry["finished"]:
                entry["measured_layer"] = record_measured(Path(entry["store"]), name)
                print(f"\n{name}: --layers auto now edits at layer {entry['measured_layer']['layer']} on this model "
                      f"(written to {MEASURED})")
            if name == "memit" and entry["finished"]:
                at_located(entry, facts, args.workers, args.max_minutes)
            write_json_atomic(out_path, report)
            print_grid(name, entry)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
