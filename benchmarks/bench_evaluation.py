"""Every editor on every axis, and what the generation-based evaluation costs (default model).

Sections (``--only`` picks some):

* ``timing``: ``evaluate()`` on ``--timing-facts`` facts of the extended set, teacher-forced protocols
  alone (``generation=False``) vs teacher-forced + generation (the default), each with its unedited
  reference (``pre_edit_predictions``), on ``--threads`` threads; the ratio is the cost of the
  generation protocol.
* ``editors``: each editor edits the same ``--facts`` facts (extended set, spread over the relations,
  facts with relation-specificity probes first) and is evaluated on every axis: CounterFact (efficacy,
  paraphrase, neighbourhood, relation specificity P(true) > P(new)), EasyEdit (rewrite / rephrase /
  locality / relation specificity / portability accuracies against the unedited model), generation
  (efficacy, paraphrase, neighbourhood, relation specificity, portability) and fluency. Modes: ROME at
  ``auto`` and at its default layer, FT, one at a time and undone in between; MEMIT, one batch;
  null-space MEMIT in sequential batches of ``--seq-batch``; GRACE (last-token and subject keys), WISE
  (``wise``: its defaults; ``wise_tuned``: the config benchmarks/wise_tune.py chose on its tuning split,
  read from benchmarks/results/wise_tune.json) and FactKey, sequential, one edit at a time (all edits
  applied when evaluated); ``unedited``, the same
  evaluation before any edit. Resumable: each finished mode is written to the JSON at once and skipped
  on a re-run.
* ``same_subject``: the bundled same-subject set (one subject edited under two or three relations in
  one sequential run, first edits first), every edit of ``--ss-subjects`` subjects, with GRACE (both keys),
  null-space MEMIT and FactKey: per-edit retention at the end, split into first / later edits of a subject.

    python benchmarks/bench_evaluation.py --only timing
    python benchmarks/bench_evaluation.py --only editors --facts 50      # again to continue
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from knowscope.editing.editors import get_editor
from knowscope.editing.evaluation import ALL_KEYS, EditMetrics, evaluate, pre_edit_predictions
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.memit import SequentialMEMIT
from knowscope.editing.session import EditSession
from knowscope.facts import Fact, load_bundled_facts, write_json_atomic
from knowscope.models import load_model
from knowscope.sweep.grid import spread

RESULTS = Path(__file__).parent / "results"
MODES = ("unedited", "rome_auto", "rome_default", "ft", "memit_batch", "null_space_seq", "grace", "grace_subject",
         "wise", "wise_tuned", "factkey", "ultraedit")
TABLE = ("efficacy_score", "gen_efficacy", "paraphrase_score", "gen_paraphrase", "neighborhood_score",
         "gen_neighborhood", "locality_acc", "relation_specificity", "relation_specificity_score",
         "gen_relation_specificity", "portability_acc", "gen_portability", "fluency")


def edit_facts(n: int) -> list[Fact]:
    """``n`` extended-set facts spread over the relations, those with relation-specificity probes first."""
    facts = load_bundled_facts(name="extended")
    with_probes = [f for f in facts if f.relation_specificity]
    chosen = spread(with_probes, min(n, len(with_probes)))
    if len(chosen) < n:
        taken = {f.case_id for f in chosen}
        chosen += spread([f for f in facts if f.case_id not in taken], n - len(chosen))
    return chosen


WISE_CONFIG: list[str] = []  # --wise-config: another wise_tune.py config than the chosen one


def wise_tuned() -> dict[str, Any]:
    """The WISE settings benchmarks/wise_tune.py chose on its tuning split (its GRID entry), or the config
    ``--wise-config`` names."""
    from wise_tune import GRID, OUT

    chosen = WISE_CONFIG[0] if WISE_CONFIG else json.loads(OUT.read_text()).get("chosen") if OUT.is_file() else None
    if chosen not in GRID:
        raise SystemExit(f"no tuned WISE config in {OUT}: run benchmarks/wise_tune.py first")
    logging.info("wise_tuned: %s %s", chosen, GRID[chosen])
    return GRID[chosen]


def timing(model: Any, n: int) -> dict[str, Any]:
    facts = spread(load_bundled_facts(name="extended"), n)
    out: dict[str, Any] = {"facts": len(facts), "threads": torch.get_num_threads()}
    for label, gen in (("teacher_forced", False), ("both", True), ("teacher_forced_again", False)):
        t0 = time.perf_counter()
        ref = pre_edit_predictions(model, facts, generation=gen)
        m = evaluate(model, facts, reference=ref, generation=gen, fluency=False)
        out[label] = {"seconds": time.perf_counter() - t0, "metrics": m.flat()}
        logging.info("timing %s: %.1f s", label, out[label]["seconds"])
    tf = (out["teacher_forced"]["seconds"] + out["teacher_forced_again"]["seconds"]) / 2
    out["ratio_both_over_teacher_forced"] = out["both"]["seconds"] / tf
    return out


def run_mode(model: Any, mode: str, facts: list[Fact], seq_batch: int) -> dict[str, Any]:
    """Edit ``facts`` with ``mode`` and evaluate every axis; the model is unedited again afterwards."""
    session = EditSession(model)
    ref = pre_edit_predictions(model, facts)
    t0 = time.perf_counter()
    edit_seconds = 0.0
    stopped = None
    try:
        if mode in ("rome_auto", "rome_default", "ft"):
            rows, notes = [], {}
            for fact in facts:
                t1 = time.perf_counter()
                if mode == "ft":
                    result = get_editor("ft")(model, [fact])
                else:
                    layers = "auto" if mode == "rome_auto" else ROMEHyperParams.for_model(model).layer
                    result = get_editor("rome")(model, [fact], layers=layers)
                edit_seconds += time.perf_counter() - t1
                with session.temporary(result):
                    m = evaluate(model, [fact], reference=ref)
                rows += m.per_fact
                notes = {**m.notes, "layers": result.layers}
            metrics = EditMetrics.from_rows(rows, notes)
        elif mode == "unedited":  # the baseline every row compares with
            metrics = evaluate(model, facts, reference=ref)
        else:
            if mode == "memit_batch":
                session.apply(get_editor("memit")(model, facts))
            elif mode == "null_space_seq":
                seq = SequentialMEMIT(model, hparams=MEMITHyperParams.for_model(model), null_space=True)
                for i in range(0, len(facts), seq_batch):
                    session.apply(seq.edit(facts[i : i + seq_batch]))
            else:
                name, extra = {"grace_subject": ("grace", {"key": "subject"}),
                               "wise_tuned": ("wise", wise_tuned())}.get(mode, (mode, {}))
                editor = get_editor(name)
                hp = editor.hparams.for_model(model, **extra)
                for k, fact in enumerate(facts):
                    try:
                        session.apply(editor(model, [fact], hparams=hp))
                    except ValueError as exc:  # the editor refused (e.g. a router that would route everything)
                        stopped, facts = f"refused edit {k + 1}: {exc}", facts[:k]
                        logging.warning("%s stopped: %s", mode, stopped)
                        break
            edit_seconds = time.perf_counter() - t0
            metrics = evaluate(model, facts, reference=ref)
    finally:
        session.rollback()
    return {"mode": mode, "facts": len(facts), "stopped": stopped, "edit_seconds": edit_seconds,
            "seconds": time.perf_counter() - t0,
            "metrics": metrics.flat(), "notes": {k: v for k, v in metrics.notes.items() if k != "routing"},
            "routing": (metrics.notes.get("routing") or {}).get("routed_share"),
            "per_fact": [{k: v for k, v in r.items() if k not in ("prompts", "routing")} for r in metrics.per_fact]}


def same_subject(model: Any, mode: str, n_subjects: int) -> dict[str, Any]:
    """One sequential run over every edit of the same-subject set's first ``n_subjects`` subjects, in the
    file's order (every subject's first edit, then the second ones, then the third); every edit's efficacy
    at the end."""
    every = load_bundled_facts(name="same_subject")
    chosen = list(dict.fromkeys(f.subject for f in every))[:n_subjects]
    facts = [f for f in every if f.subject in set(chosen)]
    res = run_mode(model, {"memit": "null_space_seq"}.get(mode, mode), facts, seq_batch=1)
    seen: set[str] = set()
    first: list[float] = []
    later: list[float] = []
    for fact, row in zip(facts, res["per_fact"], strict=True):
        (later if fact.subject in seen else first).append(row["efficacy_score"])
        seen.add(fact.subject)
    res["retention_first_edits"] = sum(first) / len(first) if first else None
    res["retention_later_edits"] = sum(later) / len(later) if later else None
    res["subjects"] = len(seen)
    return res


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    def f(x: Any) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    print(f"{'mode':>15} " + " ".join(f"{k[:10]:>10}" for k in TABLE))
    for mode, r in rows.items():
        print(f"{mode:>15} " + " ".join(f"{f(r['metrics'].get(k)):>10}" for k in TABLE))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="timing,editors,same_subject")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--facts", type=int, default=50)
    ap.add_argument("--seq-batch", type=int, default=10)
    ap.add_argument("--timing-facts", type=int, default=500)
    ap.add_argument("--ss-subjects", type=int, default=30)
    ap.add_argument("--ss-modes", default="grace,grace_subject,memit,factkey")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "bench_evaluation.json"))
    ap.add_argument("--wise-config", default="", help="wise_tuned: this wise_tune.py config instead of the chosen")
    args = ap.parse_args(argv)
    WISE_CONFIG[:] = [args.wise_config] if args.wise_config else []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    report: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    model = load_model()
    only = set(args.only.split(","))
    report["model"], report["threads"] = model.name, args.threads
    if "timing" in only:
        report["timing"] = timing(model, args.timing_facts)
        write_json_atomic(out_path, report)
        t = report["timing"]
        print(f"evaluate() on {t['facts']} facts: teacher-forced {t['teacher_forced']['seconds']:.1f} s "
              f"(again {t['teacher_forced_again']['seconds']:.1f} s), both protocols {t['both']['seconds']:.1f} s, "
              f"ratio {t['ratio_both_over_teacher_forced']:.2f}")
    if "editors" in only:
        editors = report.setdefault("editors", {})
        for mode in args.modes.split(","):
            if mode in editors and (editors[mode].get("facts") == args.facts or editors[mode].get("stopped")):
                continue  # measured already (resumable)
            logging.info("editors: %s on %d facts", mode, args.facts)
            editors[mode] = run_mode(model, mode, edit_facts(args.facts), args.seq_batch)
            if mode == "wise_tuned":
                editors[mode]["wise_settings"] = wise_tuned()
            write_json_atomic(out_path, report)
        print_table(editors)
    if "same_subject" in only:
        ss = report.setdefault("same_subject", {})
        for mode in args.ss_modes.split(","):
            if mode in ss and ss[mode].get("subjects") == args.ss_subjects:
                continue
            logging.info("same subject: %s, %d subjects", mode, args.ss_subjects)
            ss[mode] = same_subject(model, mode, args.ss_subjects)
            write_json_atomic(out_path, report)
        for mode, r in ss.items():
            print(f"same-subject {mode}: {r['subjects']} subjects, {r['facts']} edits; retention first edits "
                  f"{r['retention_first_edits']}, later edits {r['retention_later_edits']}")
        print_table(ss)
    unknown = set(report.get("editors", {})) - set(MODES)
    assert not unknown and set(TABLE) <= set(ALL_KEYS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
