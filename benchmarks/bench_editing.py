"""Editing benchmark on the default model: speed, key-statistics convergence and edit quality.

Sections (``--only`` picks some):

* ``stats``: time to collect ``E[k kᵀ]`` vs tokens, and C's relative change
  ``‖C_n − C_2n‖_F / ‖C_2n‖_F`` as the token count doubles (the default token count comes from it);
* ``rome``: seconds per ROME edit (statistics cached and cold) and CounterFact efficacy, paraphrase
  and neighbourhood scores, one fact at a time (undone between facts);
* ``memit``: seconds for one MEMIT batch and its CounterFact scores;
* ``sequential``: ``--seq-edits`` edits in batches of ``--seq-batch`` with plain MEMIT vs null-space
  MEMIT, resumable (state under ``--seq-store``, saved after every batch): the collapse monitor's
  signals after each batch — efficacy over all edits so far and over the first batch, and on a
  held-back probe of every 10th bundled fact (never edited) the neighbourhood score, EasyEdit
  locality, top-1 accuracy and fluency; the accumulated update norm.

Scores follow ROME's CounterFact protocol: a prompt counts as a success when the mean per-token
log-probability of `` target_new`` exceeds that of `` target_true`` (reversed for neighbourhood
prompts). Prints a table per section and writes ``benchmarks/results/bench_editing.json``.

    python benchmarks/bench_editing.py --quick          # small settings, minutes
    python benchmarks/bench_editing.py                  # full run
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from knowscope.editing import EditSession
from knowscope.editing import memit as memit_mod
from knowscope.editing import rome as rome_mod
from knowscope.editing.evaluation import evaluate
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.sequential import CollapseMonitor, run_sequential
from knowscope.editing.stats import key_stats
from knowscope.facts import Fact, load_bundled_facts, write_json_atomic
from knowscope.models import load_model

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# CounterFact scoring: the library's own definitions (knowscope.editing.evaluation), per fact


def counterfact_scores(model: Any, facts: Sequence[Fact]) -> dict[str, Any]:
    """Per fact: efficacy (prompt), paraphrase and neighbourhood success shares and magnitudes."""
    rows = evaluate(model, facts, fluency=False).per_fact
    out: dict[str, Any] = {}
    for kind in ("efficacy", "paraphrase", "neighborhood"):
        out[f"{kind}_per_fact"] = [r[f"{kind}_score"] for r in rows if r[f"{kind}_score"] is not None]
        out[f"{kind}_magnitude_per_fact"] = [r[f"{kind}_magnitude"] for r in rows if r[f"{kind}_magnitude"] is not None]
    return out


def spread(facts: Sequence[Fact], n: int) -> list[Fact]:
    """``n`` facts taken evenly across the bundled list, so every relation is represented."""
    step = max(1, len(facts) // n)
    return list(facts[::step][:n])


def mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


# ---------------------------------------------------------------------------------------------


def bench_stats(model: Any, layer: int, counts: list[int]) -> dict[str, Any]:
    rows = []
    mats: dict[int, torch.Tensor] = {}
    for n in counts:
        t = time.perf_counter()
        st = key_stats(model, [layer], n_tokens=n, progress=False)[layer]
        rows.append({"tokens": n, "seconds_cached_or_cold": time.perf_counter() - t})
        mats[n] = st.mom2.double()
    for i in range(len(counts) - 1):
        a, b = mats[counts[i]], mats[counts[i + 1]]
        rows[i]["rel_change_to_next"] = float((a - b).norm() / b.norm())
    print(f"\nkey statistics: relative change of C as tokens grow (layer {layer})")
    print(f"{'tokens':>8} {'seconds':>9} {'|C_n - C_next|/|C_next|':>24}")
    for r in rows:
        change = r.get("rel_change_to_next", float("nan"))
        print(f"{r['tokens']:>8} {r['seconds_cached_or_cold']:>9.1f} {change:>24.4f}")
    return {"layer": layer, "rows": rows}


def bench_rome(model: Any, facts: list[Fact], hp: ROMEHyperParams) -> dict[str, Any]:
    session = EditSession(model)
    layer = hp.layer
    t = time.perf_counter()
    stats = key_stats(model, [layer], n_tokens=hp.stats_tokens, source=hp.stats_source, progress=False)
    stats_s = time.perf_counter() - t
    eff, para, neigh, emag, pmag, nmag, secs, steps = [], [], [], [], [], [], [], []
    before = counterfact_scores(model, facts)
    for i, f in enumerate(facts):
        t = time.perf_counter()
        res = rome_mod.edit(model, [f], layers=layer, hparams=hp, stats=stats)
        secs.append(time.perf_counter() - t)
        steps.append(res.extra["per_request"][0]["steps"])
        with session.temporary(res):
            sc = counterfact_scores(model, [f])
        eff += sc["efficacy_per_fact"]
        para += sc["paraphrase_per_fact"]
        neigh += sc["neighborhood_per_fact"]
        emag += sc["efficacy_magnitude_per_fact"]
        pmag += sc["paraphrase_magnitude_per_fact"]
        nmag += sc["neighborhood_magnitude_per_fact"]
        print(f"  rome {i + 1}/{len(facts)} {f.subject!r} -> {f.target_new!r}: eff {eff[-1]:.0f} para {para[-1]:.2f} "
              f"neigh {neigh[-1]:.2f} ({secs[-1]:.1f}s, {steps[-1]} steps)", flush=True)
    out = {
        "n_facts": len(facts), "layer": layer, "hparams": hp.to_dict(),
        "efficacy_score": mean(eff), "paraphrase_score": mean(para), "neighborhood_score": mean(neigh),
        "efficacy_magnitude": mean(emag), "paraphrase_magnitude": mean(pmag), "neighborhood_magnitude": mean(nmag),
        "before": {k: mean(before[f"{k}_per_fact"]) for k in ("efficacy", "paraphrase", "neighborhood")},
        "seconds_per_edit_stats_cached": mean(secs), "stats_seconds_first_call": stats_s,
        "seconds_per_edit_stats_cold": mean(secs[:1]) + stats_s, "mean_v_steps": mean(steps),
    }
    print(f"\nROME over {len(facts)} facts (layer {layer}), CounterFact protocol")
    print(f"{'':>22} {'before':>8} {'after':>8}")
    for k in ("efficacy", "paraphrase", "neighborhood"):
        print(f"{k + '_score':>22} {out['before'][k]:>8.3f} {out[k + '_score']:>8.3f}")
    print(f"seconds per edit (stats cached) {out['seconds_per_edit_stats_cached']:.1f}; "
          f"stats first call {stats_s:.1f}s")
    return out


def bench_memit(model: Any, facts: list[Fact], hp: MEMITHyperParams, null_space: bool = False) -> dict[str, Any]:
    """One MEMIT batch. Neighbourhood and locality are scored on prompts about unedited subjects (the
    batch's own subjects are edited); the figures over every prompt are kept as ``*_all``."""
    from knowscope.editing.evaluation import pre_edit_predictions

    session = EditSession(model)
    stats = key_stats(model, list(hp.layers), n_tokens=hp.stats_tokens, source=hp.stats_source, progress=False)
    reference = pre_edit_predictions(model, facts)
    t = time.perf_counter()
    res = memit_mod.edit(model, facts, hparams=hp, null_space=null_space, stats=stats)
    secs = time.perf_counter() - t
    with session.temporary(res):
        m = evaluate(model, facts, reference=reference, fluency=False)
    out = {"n_facts": len(facts), "layers": list(hp.layers), "null_space": null_space, "seconds": secs,
           "hparams": hp.to_dict(), "update_norms": res.extra["update_norms"],
           "specificity_prompts": m.notes["specificity_prompts"]}
    for k in ("efficacy", "paraphrase", "neighborhood"):
        out[f"{k}_score"] = getattr(m, f"{k}_score")
        out[f"{k}_magnitude"] = getattr(m, f"{k}_magnitude")
    out["neighborhood_score_all"] = m.neighborhood_score_all
    out["locality_acc"], out["locality_acc_all"] = m.locality_acc, m.locality_acc_all
    print(f"\nMEMIT batch of {len(facts)} (layers {list(hp.layers)}, null_space={null_space}): {secs:.1f}s")
    for k in ("efficacy_score", "paraphrase_score", "neighborhood_score", "neighborhood_score_all", "locality_acc",
              "locality_acc_all"):
        print(f"{k:>24} {out[k]:>8.3f}")
    print(f"{'neighbourhood prompts':>24} kept {m.notes['specificity_prompts']['neighborhood']['kept']}, dropped "
          f"{m.notes['specificity_prompts']['neighborhood']['dropped_edited_subject']} (about edited subjects)")
    return out


def bench_sequential(model: Any, facts: list[Fact], probe: list[Fact], hp: MEMITHyperParams, batch: int,
                     modes: Sequence[str], store: Path, fluency_prompts: int = 4) -> dict[str, Any]:
    """Plain vs null-space MEMIT over successive batches, resumable, with the collapse monitor.

    Each mode runs through :func:`knowscope.editing.sequential.run_sequential` into ``store/<mode>``:
    saved after every batch, so an interrupted benchmark continues where it stopped. The monitor's
    probe is a held-back set of facts that are never edited; neighbourhood and locality are scored
    on its prompts that name no edited subject. Per batch: efficacy over all edits so far and over
    the first batch (retention), neighbourhood and EasyEdit locality, probe accuracy, fluency and the
    accumulated update norm of each edited weight.
    """
    stats = key_stats(model, list(hp.layers), n_tokens=hp.stats_tokens, source=hp.stats_source, progress=False)
    curves: dict[str, list[dict[str, Any]]] = {}
    for mode in modes:
        mon = CollapseMonitor(probe=probe, fluency_prompts=fluency_prompts)
        t = time.perf_counter()
        run = run_sequential(model, facts, batch, store / f"{mode}-b{batch}-n{len(facts)}",
                             null_space=mode == "null_space", hparams=hp, monitor=mon, stats=stats)
        rows = []
        for r in run.records:
            sig = r["signals"]
            rows.append({"edits": r["edits"], "seconds": r["seconds"], "efficacy_all_so_far": sig["efficacy_all"],
                         "efficacy_first_batch": sig["retention_first"], "neighborhood_score": sig["neighborhood"],
                         "locality_acc": sig["locality"], "probe_accuracy": sig["probe_accuracy"],
                         "fluency": sig["fluency"],
                         "max_update_norm": max(sig["update_norm"].values()) if sig["update_norm"] else 0.0,
                         "warnings": r["warnings"]})
        curves[mode] = rows
        print(f"  {mode}: {len(rows) - 1} batches ({time.perf_counter() - t:.0f}s in this call)", flush=True)
    print_sequential(curves, batch)
    return {"batch": batch, "n_edits": len(facts), "probe_facts": len(probe), "curves": curves,
            "store": str(store), "fluency_prompts": fluency_prompts}


def print_sequential(curves: dict[str, list[dict[str, Any]]], batch: int) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"\nsequential MEMIT, batches of {batch} (neighbourhood / locality on never-edited probe facts)")
    print(f"{'mode':>10} {'edits':>6} {'eff all':>8} {'eff 1st':>8} {'neigh':>7} {'local':>7} {'probe acc':>9} "
          f"{'fluency':>8} {'max dW':>7}")
    for mode, rows in curves.items():
        for r in rows:
            g = r.get  # rows written before the monitor lack some signals
            print(f"{mode:>10} {r['edits']:>6} {f(g('efficacy_all_so_far')):>8} {f(g('efficacy_first_batch')):>8} "
                  f"{f(g('neighborhood_score')):>7} {f(g('locality_acc')):>7} {f(g('probe_accuracy')):>9} "
                  f"{f(g('fluency')):>8} {f(g('max_update_norm')):>7}")


def merge_reports(paths: Sequence[str], out: Path) -> int:
    """Merge reports of runs made in parallel (e.g. one sequential mode per process) into one."""
    merged: dict[str, Any] = {"merged_from": list(paths)}
    for p in paths:
        rep = json.loads(Path(p).read_text())
        for key, value in rep.items():
            if key == "sequential" and "sequential" in merged:
                merged["sequential"]["curves"].update(value["curves"])
            elif key == "peak_rss_mb":
                merged[key] = max(merged.get(key, 0.0), value)
            else:
                merged.setdefault(key, value)
    seq = merged.get("sequential")
    if seq:
        print_sequential(seq["curves"], seq["batch"])
    write_json_atomic(out, merged)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small settings")
    ap.add_argument("--only", default="stats,rome,memit,sequential")
    ap.add_argument("--rome-facts", type=int, default=50)
    ap.add_argument("--memit-facts", default="50,100",
                    help="MEMIT batch sizes, comma-separated (50 -> memit_50, another size -> memit)")
    ap.add_argument("--seq-edits", type=int, default=200)
    ap.add_argument("--seq-batch", type=int, default=20)
    ap.add_argument("--seq-modes", default="memit,null_space",
                    help="which sequential modes to run (one per process lets two cores share the work)")
    ap.add_argument("--seq-store", default="runs/bench_sequential",
                    help="where the sequential runs save their state after every batch (a re-run continues)")
    ap.add_argument("--stats-counts", default="1000,2000,4000,8000,16000")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(RESULTS / "bench_editing.json"))
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the sections of JSON reports written by separate runs into --out and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.rome_facts, args.memit_facts, args.seq_edits, args.seq_batch = 5, "10", 20, 10
        args.stats_counts = "1000,2000,4000"
    if args.merge:
        return merge_reports(args.merge, Path(args.out))
    only = set(args.only.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    facts = load_bundled_facts()
    rome_hp = ROMEHyperParams.for_model(model)
    memit_hp = MEMITHyperParams.for_model(model)
    report: dict[str, Any] = {"model": model.name, "fingerprint": model.fingerprint, "device": str(model.device),
                              "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    if "stats" in only:
        report["stats"] = bench_stats(model, rome_hp.layer, [int(x) for x in args.stats_counts.split(",")])
    if "rome" in only:
        report["rome"] = bench_rome(model, spread(facts, args.rome_facts), rome_hp)
    if "memit" in only:
        for size in (int(x) for x in str(args.memit_facts).split(",")):
            report["memit_50" if size == 50 else "memit"] = bench_memit(model, spread(facts, size), memit_hp)
    if "sequential" in only:
        probe = facts[9::10]  # held back: never edited, spread over the relations like the rest
        held = {f.subject for f in probe}  # a subject can have facts of several relations: keep all of them out
        edits = [f for f in facts if f.subject not in held][: args.seq_edits]
        report["sequential"] = bench_sequential(model, edits, probe, memit_hp, args.seq_batch,
                                                args.seq_modes.split(","), Path(args.seq_store))
    report["peak_rss_mb"] = peak_rss_mb()
    print(f"\npeak memory (RSS) {report['peak_rss_mb']:.0f} MB")
    out = Path(args.out)
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
