"""500 sequential edits on the default model, side by side: plain MEMIT, the null-space mode, GRACE, WISE.

Facts: the bundled extended set (``scripts/build_facts.py``). First ``--probe`` facts spread over the
relations are held back as the collapse monitor's probe and never edited (nor is any other fact about
their subjects); the next ``--edits`` facts spread over the relations are edited. Each mode
(``--modes``: ``memit`` = plain MEMIT, ``null_space`` = AlphaEdit's projected update, both with
:meth:`MEMITHyperParams.for_model` defaults, in batches of ``--batch``; ``grace``, ``grace_subject``
(GRACE keyed at the subject's last token) and ``wise``, the memory editors, one edit at a time,
measured every ``--every`` edits) runs through
:func:`knowscope.editing.sequential.run_sequential` into ``--store/<mode>``, saved at every record.
The modes advance in turn, one record each, so a stopped run (``--max-minutes``, or a session that
ends) leaves them level, and a re-run continues each from its last record. Curves of modes not run
in this call are kept from the JSON file (the MEMIT modes were measured in an earlier session).

At every record the monitor records: efficacy over all edits so far, retention of the first batch
(of the first 50 edits for the memory editors), the CounterFact paraphrase score and EasyEdit
rephrase accuracy over all edits so far,
on the never-edited probe the CounterFact neighbourhood score and EasyEdit locality (prompts that
name an edited subject left out), the probe facts' own top-1 accuracy, fluency (n-gram entropy of
generations from 4 probe prompts), and the accumulated update norm ‖W − W₀‖/‖W₀‖ of each edited
weight. Printed side by side per batch and written to ``benchmarks/results/bench_sequential.json``
with the acceptance checks of #19 (null-space MEMIT) and #29 (memory editors).

With ``--final``, every finished mode's edits are then evaluated on every axis (relation specificity,
portability and the generation-based scores beside the teacher-forced ones) on the edited facts and the
probe, into the JSON's ``final``.

    python benchmarks/bench_sequential.py --modes grace,wise --max-minutes 60     # again to continue
    python benchmarks/bench_sequential.py --modes grace,grace_subject --final     # every axis after the runs
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

from knowscope.editing.editors import get_editor
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.sequential import CollapseMonitor, SequentialRun, load_run_edits, run_sequential
from knowscope.editing.session import EditSession
from knowscope.facts import Fact, load_bundled_facts, write_json_atomic
from knowscope.models import load_model
from knowscope.sweep.grid import spread

RESULTS = Path(__file__).parent / "results"
MODES = ("memit", "null_space", "grace", "grace_subject", "wise")
MEMORY_MODES = {"grace": ("grace", {}), "grace_subject": ("grace", {"key": "subject"}), "wise": ("wise", {})}


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
                    "retention_first": s.get("retention_first"), "paraphrase": s.get("paraphrase"),
                    "rephrase_acc": s.get("rephrase_acc"), "neighborhood": s.get("neighborhood"),
                    "locality": s.get("locality"), "probe_accuracy": s.get("probe_accuracy"),
                    "fluency": s.get("fluency"),
                    "max_update_norm": max(s["update_norm"].values()) if s.get("update_norm") else 0.0,
                    "warnings": r.get("warnings", [])})
    return out


def seconds_per_edit(rows: list[dict[str, Any]]) -> float | None:
    """Mean seconds per edit over the whole run (monitor time excluded)."""
    edited = rows[-1]["edits"] if rows else 0
    return sum(r["seconds"] for r in rows) / edited if edited else None


def median_seconds_per_edit(rows: list[dict[str, Any]]) -> float | None:
    """The median record's seconds per edit: a record that shared the two cores with another torch job
    runs several times slower (threads oversubscribed), and the median is not moved by a few of them."""
    pairs = zip(rows[:-1], rows[1:], strict=True)
    rates = sorted(r["seconds"] / (r["edits"] - p["edits"]) for p, r in pairs if r["edits"] > p["edits"])
    return rates[len(rates) // 2] if rates else None


def memory_checks(rows: list[dict[str, Any]], n_edits: int) -> dict[str, Any]:
    """#29's acceptance points for one memory editor's curve, after its last record."""
    base, last = rows[0], rows[-1]
    spe, median = seconds_per_edit(rows), median_seconds_per_edit(rows)
    return {
        "edits": last["edits"], "complete": last["edits"] >= n_edits,
        "efficacy_all>=0.95": last["efficacy_all"] >= 0.95,
        "neighborhood_within_0.02": base["neighborhood"] - last["neighborhood"] <= 0.02,
        "locality>=0.95": last["locality"] >= 0.95,
        "retention_first>=0.95": last["retention_first"] >= 0.95,
        "fluency_within_5%": last["fluency"] is None or last["fluency"] >= 0.95 * base["fluency"],
        "paraphrase>=0.7": last["paraphrase"] is not None and last["paraphrase"] >= 0.7,
        "seconds_per_edit": spe, "median_record_seconds_per_edit": median,
        "median_record_seconds_per_edit<=2": median is not None and median <= 2.0,
    }


def checks(curves: dict[str, list[dict[str, Any]]], n_edits: int) -> dict[str, Any]:
    """#19's and #29's acceptance points, on what has been measured so far."""
    ns, plain = curves.get("null_space", []), curves.get("memit", [])
    out: dict[str, Any] = {"batches_measured": {m: len(r) - 1 for m, r in curves.items()}}
    for mode in MEMORY_MODES:
        if len(curves.get(mode, [])) > 1:
            out[f"{mode}_after_last_record"] = memory_checks(curves[mode], n_edits)
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

    print(f"\n{'mode':>13} {'edits':>5} {'eff all':>7} {'eff 1st':>7} {'para':>6} {'reph':>6} {'neigh':>6} "
          f"{'local':>6} {'p.acc':>6} {'fluency':>7} {'max dW':>6} {'s':>5}")
    for mode, rows in curves.items():
        for r in rows:
            print(f"{mode:>13} {r['edits']:>5} {f(r['efficacy_all']):>7} {f(r['retention_first']):>7} "
                  f"{f(r.get('paraphrase')):>6} {f(r.get('rephrase_acc')):>6} "
                  f"{f(r['neighborhood']):>6} {f(r['locality']):>6} {f(r['probe_accuracy']):>6} "
                  f"{f(r['fluency']):>7} {f(r['max_update_norm']):>6} {r['seconds']:>5.0f}")


def evaluate_run(model: Any, run_dir: Path, edited: list[Fact], probe: list[Fact]) -> tuple[Any, Any]:
    """A saved run's edits applied and evaluated on every axis against the unedited model: ``(metrics on the
    edited facts, metrics on the never-edited probe)``; the model is unedited again afterwards."""
    reference = pre_edit_predictions(model, edited + probe)
    session = EditSession(model)
    try:
        for result in load_run_edits(run_dir):
            session.apply(result)
        mine = evaluate(model, edited, reference=reference, fluency=False)
        held = evaluate(model, probe, reference=reference, fluency=True, edited=edited)
    finally:
        session.rollback()
    return mine, held


def final_evaluation(model: Any, run_dir: Path, edited: list[Fact], probe: list[Fact]) -> dict[str, Any]:
    """Every axis after a run: its edits applied, evaluated on the edited facts and on the never-edited probe
    (CounterFact, EasyEdit, generation; relation specificity and portability where the facts have them),
    each against the unedited model; per-edit efficacy at the end (retention of every edit)."""
    t0 = time.perf_counter()
    mine, held = evaluate_run(model, run_dir, edited, probe)
    first = [r["efficacy_score"] for r in mine.per_fact[:100]]
    return {"edits": len(edited), "seconds": time.perf_counter() - t0, "edited": mine.flat(), "probe": held.flat(),
            "retention_first_100": sum(first) / len(first) if first else None,
            "efficacy_per_edit": [r["efficacy_score"] for r in mine.per_fact]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edits", type=int, default=500)
    ap.add_argument("--batch", type=int, default=50, help="MEMIT modes: facts per batch")
    ap.add_argument("--every", type=int, default=50, help="memory editors: edits between records")
    ap.add_argument("--probe", type=int, default=50)
    ap.add_argument("--modes", default="grace,grace_subject,wise")
    ap.add_argument("--store", default="runs/bench_sequential500", help="run folders, one per mode (resumable)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new batch after this long")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_sequential.json"))
    ap.add_argument("--final", action="store_true",
                    help="after the runs, evaluate every finished mode's edits on every axis (relation specificity, "
                         "portability, generation; knowscope.editing.evaluation) and the probe, into 'final'")
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
    t0 = time.perf_counter()
    runs: dict[str, SequentialRun] = {}

    def mode_hparams(mode: str) -> Any:
        if mode in MEMORY_MODES:
            method, overrides = MEMORY_MODES[mode]
            return get_editor(method).hparams.for_model(model, **overrides)
        return hp

    def records_total(mode: str) -> int:
        return -(-len(edits) // (args.every if mode in MEMORY_MODES else args.batch))

    def step(mode: str) -> SequentialRun:
        monitor = CollapseMonitor(probe=probe, fluency_prompts=4)
        if mode in MEMORY_MODES:
            return run_sequential(model, edits, 1, Path(args.store) / mode, method=MEMORY_MODES[mode][0],
                                  hparams=mode_hparams(mode), monitor=monitor, max_batches=args.every,
                                  save_every=args.every)
        return run_sequential(model, edits, args.batch, Path(args.store) / mode, null_space=mode == "null_space",
                              hparams=hp, monitor=monitor, max_batches=1)

    earlier = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    final: dict[str, Any] = {}
    stopped: dict[str, str] = {m: why for m, why in earlier.get("stopped", {}).items() if m not in modes}

    def report() -> dict[str, Any]:
        curves = {m: c for m, c in earlier.get("curves", {}).items() if m not in runs}
        curves.update({m: rows_of(r) for m, r in runs.items()})
        out = {"model": model.name, "fingerprint": model.fingerprint, "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:], "batch": args.batch,
               "every": args.every, "n_edits": len(edits), "n_probe": len(probe), "hparams": hp.to_dict(),
               "memory_hparams": {m: mode_hparams(m).to_dict() for m in MEMORY_MODES if m in curves},
               "probe_relations": sorted({f.relation_id for f in probe}),
               "edit_relations": sorted({f.relation_id for f in edits}), "curves": curves,
               "checks": checks(curves, len(edits)), "stopped": stopped,
               "final": {**earlier.get("final", {}), **final}}
        write_json_atomic(args.out, out)
        return out

    for mode in modes:  # what earlier calls finished
        if (Path(args.store) / mode / "state").exists():
            runs[mode] = SequentialRun.load(Path(args.store) / mode)

    def batches_done(mode: str) -> int:
        return len(runs[mode].records) - 1 if mode in runs else 0

    while modes:
        progressed = False
        for mode in modes:
            done = batches_done(mode)
            if done >= records_total(mode) or done > min(batches_done(m) for m in modes):
                continue  # finished, or ahead of another mode: let it catch up first
            if args.max_minutes is not None and time.perf_counter() - t0 > 60 * args.max_minutes:
                break
            try:
                runs[mode] = step(mode)
            except ValueError as exc:  # an editor refused an edit (e.g. a router that would route everything)
                stopped[mode] = str(exc)
                print(f"{mode}: stopped: {exc}", flush=True)
                modes = [m for m in modes if m != mode]
                report()
                progressed = bool(modes)
                break
            progressed = progressed or batches_done(mode) > done
            rec = runs[mode].records[-1]
            print(f"{mode}: {rec['edits']} edits, last record's edits {rec['seconds']:.0f}s, "
                  f"{time.perf_counter() - t0:.0f}s in this call", flush=True)
            report()
        if not progressed:
            break
    if args.final:
        for mode, run in runs.items():
            n = run.records[-1]["edits"]
            if (earlier.get("final", {}).get(mode) or {}).get("edits") == n or n == 0:
                continue
            final[mode] = final_evaluation(model, Path(args.store) / mode, edits[:n], probe)
            print(f"{mode}: final evaluation of {n} edits: " + ", ".join(
                f"{k} {v:.3f}" for k, v in final[mode]["edited"].items() if v is not None), flush=True)
            report()
    out = report()
    print_curves(out["curves"])
    print(json.dumps(out["checks"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
