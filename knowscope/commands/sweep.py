"""``knowscope sweep``: edit every fact at every layer (ROME, MEMIT windows, FT) and ask whether locating predicts it.

Each cell edits one fact at one layer, evaluates it (CounterFact + EasyEdit metrics) and undoes it;
each fact is also causally traced. Rows go into one SQLite store (``--store``); running the same
command again continues where it stopped. Runs on a local Ray cluster (``--workers N``), an existing
one (``--address``), or in this process (``--no-ray --workers 1``).

The JSON: ``n_cells``, ``n_run`` (computed by this call), ``n_skipped`` (found done), ``located_layer``
(what ``locate()`` picks from the sweep's traces), ``best_layer`` (highest CounterFact score), and
``correlation``: per metric, the pooled Spearman correlation between the MLP tracing effect at a layer
and edit success there.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from knowscope.commands import CLIError, stage
from knowscope.commands.edit import read_facts

NAME = "sweep"
HELP = "facts x layers x methods edit sweep (on Ray): does the traced layer predict where editing works?"
ORDER = 65


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model name or local HF directory (default: smollm2-135m)")
    parser.add_argument("--device", default="cpu", help="device every worker runs on (default cpu)")
    parser.add_argument("--method", default="rome", help="rome, memit or ft; several comma-separated (rome,memit)")
    parser.add_argument("--layers", default="all", help="layers to edit: 'all', '3-7', '0,5,10' or '0-29:3' "
                        "(MEMIT: the window's centre)")
    parser.add_argument("--data", default="bundled", help="fact file (CounterFact/EasyEdit/zsRE), 'bundled' or "
                        "'bundled:NAME' (a bundled set, e.g. bundled:extended)")
    parser.add_argument("--limit", type=int, default=None, help="use N facts, spread over the relations")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the v*/z optimisation (default 0)")
    parser.add_argument("--window", type=int, default=5, help="MEMIT window width, centred on the layer (default 5)")
    parser.add_argument("--hparams", default=None, help="JSON of per-method overrides, e.g. "
                        "'{\"rome\": {\"v_steps\": 10}}'")
    parser.add_argument("--samples", type=int, default=10, help="noise samples per traced cell (ROME: 10)")
    parser.add_argument("--workers", type=int, default=None, help="Ray workers (default: CPU count)")
    parser.add_argument("--address", default=None, help="join a Ray cluster: 'auto' (from a machine of the "
                        "cluster) or 'ray://HOST:PORT' (needs the Ray client: pip install 'ray[client]')")
    parser.add_argument("--no-ray", action="store_true", help="run in this process (needs --workers 1)")
    parser.add_argument("--store", required=True, help="the sweep's SQLite file (created, or continued)")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new cell after this long; "
                        "run the same command again to continue")
    parser.add_argument("--analyse-only", action="store_true", help="only read the store and report")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.models import DEFAULT_MODEL
    from knowscope.sweep import SweepResult, SweepSpec, run_sweep, spread

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.no_ray and args.workers not in (None, 1):
        raise ValueError("--no-ray runs in this process: give --workers 1 (or drop --no-ray)")
    if args.max_minutes is not None and not args.max_minutes >= 0:
        raise ValueError(f"--max-minutes must be >= 0, got {args.max_minutes}")
    report = None
    if not args.analyse_only:
        try:
            seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers") from None
        try:
            hparams = json.loads(args.hparams) if args.hparams else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"--hparams is not valid JSON ({exc})") from None
        if not isinstance(hparams, dict) or not all(isinstance(v, dict) for v in hparams.values()):
            raise ValueError("--hparams must be a JSON object of objects: {\"rome\": {\"v_steps\": 10}}")
        facts = spread(read_facts(args.data), args.limit)
        if not facts:
            raise ValueError(f"no facts in {args.data}")
        spec = SweepSpec(args.model or DEFAULT_MODEL, facts, methods=[m.strip() for m in args.method.split(",")],
                         layers=args.layers, seeds=seeds, window=args.window, hparams=hparams,
                         trace={"samples": args.samples}, device=args.device)
        stage(f"sweep into {args.store}: each of {len(facts)} facts traced once, then edited, evaluated and undone "
              "at every layer of the grid (cells already in the store are skipped)")
        try:
            report = run_sweep(spec, args.store, workers=1 if args.no_ray else args.workers, address=args.address,
                               use_ray=not args.no_ray,
                               max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
        except RuntimeError as exc:
            if any(m in str(exc) for m in ("Ray is not installed", "Ray client", "workers died", "could not start",
                                           "another sweep")):
                raise CLIError(str(exc)) from None
            raise
        except sqlite3.OperationalError as exc:  # a full disk or a read-only folder under the store
            raise CLIError(f"cannot write the sweep store {args.store}: {exc}") from None
    res = SweepResult.load(args.store)
    if not res.methods:
        raise CLIError(f"{args.store} holds no finished cells yet")
    summary = res.summary()
    out = {
        "store": str(args.store), "model": res.settings["model"], "methods": res.methods,
        "n_cells": report.n_cells if report else len(res.cells), "n_run": report.n_run if report else 0,
        "n_skipped": report.n_skipped if report else len(res.cells),
        "n_errors": report.n_errors if report else len(res.errors),
        "located_layer": summary["located_layer"], "best_layer": summary["best_layer"],
        "correlation": summary["correlation"], "quality_lost": summary["quality_lost"],
        "cells_per_second": report.cells_per_second if report else None,
        "workers": report.workers if report else None, "restarts": report.n_restarts if report else 0,
        "finished": (report.n_run + report.n_skipped == report.n_cells) if report else None,
        "per_method": {m: {k: v for k, v in res.summary(m).items() if k != "by_layer"} for m in res.methods},
        "by_layer": summary["by_layer"],
    }
    _print(out, res)
    return out


def _print(out: dict[str, Any], res: Any) -> None:
    print(f"sweep {out['store']}: {out['n_cells']} cells ({out['n_run']} run now, {out['n_skipped']} found done, "
          f"{out['n_errors']} errors), {len(res.traces)} facts traced")
    for m in out["methods"]:
        s = out["per_method"][m]
        lost = s["quality_lost"].get("score")
        lost_s = "n/a" if lost is None else f"{lost:.3f}"
        print(f"  {m}: best layer {s['best_layer']}, locate() picks {s['located_layer']}; CounterFact score lost at "
              f"the located layer: {lost_s}")
        corr = ", ".join(f"{k} {'n/a' if v is None else f'{v:+.2f}'}" for k, v in s["correlation"].items())
        print(f"  {m}: rank correlation of MLP tracing effect with success: {corr}")
