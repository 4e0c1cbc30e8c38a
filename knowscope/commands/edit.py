"""``knowscope edit``: edit facts with ROME, MEMIT, constrained fine-tuning, a memory editor (GRACE,
WISE, FactKey) or the lifelong weight editor UltraEdit, and evaluate the edits.

Each fact is edited to its ``target_new`` and evaluated under both protocols (CounterFact scores and
EasyEdit accuracies, see :mod:`knowscope.editing.evaluation`). Locality is always compared with the
unedited model: its predictions are taken once, before the first edit.

* ROME / FT: one fact per edit, undone before the next one; with ``--sequential`` the edits pile up and
  all facts are evaluated at the end.
* GRACE / WISE: edits kept in a side memory behind a router, weights untouched; ``--batch-size``
  facts per edit call (default 1). With ``--sequential`` the edits pile up in one memory; with
  ``--run-dir`` the run is resumable and monitored as for MEMIT (the memory is saved as a checkpoint).
  The JSON's ``per_fact`` rows carry ``routing`` (which memory answered each prompt, with its score).
* UltraEdit: one closed-form update of the MLP output projections per edit call (``--batch-size`` facts,
  default 1); its lifelong statistics follow the edits applied. With ``--sequential`` the edits pile up;
  with ``--run-dir`` the run is resumable and monitored (the edits so far saved as one checkpoint).
* MEMIT: batches of ``--batch-size`` facts, each batch edited from the original model and undone; with
  ``--sequential`` the batches pile up (``SequentialMEMIT``; ``--null-space`` projects each batch onto
  the approximate null space of the key statistics and of the earlier edits, AlphaEdit's idea).
  ``--run-dir DIR`` makes a sequential MEMIT run resumable and monitored
  (:func:`knowscope.editing.sequential.run_sequential`): the run is saved into DIR after every batch,
  the same command with the same DIR continues after the last finished batch, and after every batch
  a :class:`~knowscope.editing.sequential.CollapseMonitor` measures the model on ``--probe`` facts
  that are never edited (``--stop-on-warning`` stops at the first warning).

``--save DIR`` writes ``DIR/metrics`` (the metrics, per fact) and the edits: ``DIR/session`` (an
:class:`EditSession` that ``EditSession.load`` re-applies) when the edits pile up, else one
``DIR/edits/NNNN`` :class:`EditResult` per independent edit.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from knowscope.commands import add_model_argument, load_from_args, stage

NAME = "edit"
HELP = "edit facts with ROME, MEMIT, fine-tuning, GRACE, WISE, FactKey or UltraEdit, and evaluate them"
ORDER = 60
METHODS = ("rome", "memit", "ft", "grace", "wise", "factkey", "ultraedit")
MEMORY_METHODS = ("grace", "wise", "factkey")
#: methods that take --batch-size facts per edit call and a --run-dir sequential run
RUN_METHODS = ("memit", *MEMORY_METHODS, "ultraedit")
DEFAULT_MEMIT_BATCH = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--method", required=True, choices=METHODS, help="editing method")
    parser.add_argument("--data", default=None,
                        help="fact file (CounterFact, EasyEdit/KnowEdit or zsRE JSON), or a bundled set: bundled "
                             "(the default), bundled:extended, bundled:same_subject")
    parser.add_argument("--limit", type=int, default=None, help="edit the first N facts")
    parser.add_argument("--layers", default=None,
                        help="auto (the layer a recorded sweep measured best on this model, else locate), "
                             "locate (the causal-tracing peak), L, or L1-L2 (default: the method's default)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"MEMIT: facts per batch (default {DEFAULT_MEMIT_BATCH}); GRACE / WISE / FactKey / "
                             "UltraEdit: facts per edit call (default 1)")
    parser.add_argument("--sequential", action="store_true",
                        help="keep edits applied (do not undo between facts / batches); evaluate at the end")
    parser.add_argument("--null-space", action="store_true",
                        help="MEMIT: project updates onto the null space of preserved keys (AlphaEdit)")
    parser.add_argument("--run-dir", metavar="DIR", default=None,
                        help="sequential MEMIT / GRACE / WISE: save after every batch into DIR; re-run with the same "
                             "DIR to continue")
    parser.add_argument("--probe", type=int, default=20,
                        help="--run-dir: never-edited facts the collapse monitor measures (default 20; 0: no monitor)")
    parser.add_argument("--probe-data", default=None,
                        help="--run-dir: fact file for the probe (default: the bundled extended set, edited "
                             "subjects left out)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="--run-dir: edit at most N batches in this call (the next call continues)")
    parser.add_argument("--stop-on-warning", action="store_true",
                        help="--run-dir: stop after the first batch the collapse monitor warns about")
    parser.add_argument("--key", choices=("last", "subject"), default=None,
                        help="GRACE: read the codebook key at the prompt's last token (GRACE, the default) or at the "
                             "subject's last token (generalises to paraphrases; docs/findings.md)")
    parser.add_argument("--save", metavar="DIR", default=None, help="save the edits and metrics to DIR")
    parser.add_argument("--no-fluency", action="store_true", help="skip the generation-entropy fluency metric")
    parser.add_argument("--no-generation", action="store_true",
                        help="skip the generation-based scores (gen_*: greedy decoding of every prompt); the "
                             "teacher-forced protocols only")
    parser.add_argument("--gen-len", type=int, default=100,
                        help="fluency: tokens per generation, prompt included (default 100, as ROME)")


def parse_layers(spec: str | None) -> int | list[int] | str | None:
    """``None``, ``"auto"``, ``"locate"``, ``"L"`` or ``"L1-L2"`` (inclusive) to what the editors take."""
    if spec is None:
        return None
    text = spec.strip()
    if text in ("auto", "locate"):
        return text
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            if lo > hi:
                raise ValueError
            return list(range(lo, hi + 1))
        return int(text)
    except ValueError:
        raise ValueError(f"--layers {spec!r} is not valid: give auto, locate, a layer L, or a range L1-L2 "
                         "(L1 <= L2)") from None


def _check_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size is not None:
        if args.method not in RUN_METHODS:
            raise ValueError(f"--batch-size is for --method memit, grace, wise, factkey or ultraedit; {args.method} "
                             "edits one fact at a time")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.key is not None and args.method != "grace":
        raise ValueError(f"--key is for --method grace, not {args.method}")
    if args.null_space and args.method != "memit":
        raise ValueError(f"--null-space is for --method memit, not {args.method}")
    if args.gen_len < 1:
        raise ValueError(f"--gen-len must be >= 1, got {args.gen_len}")
    if args.run_dir is not None and not (args.method in RUN_METHODS and args.sequential):
        raise ValueError("--run-dir is for --method memit|grace|wise|factkey|ultraedit --sequential (a resumable, "
                         "monitored sequential run)")
    if args.max_batches is not None and (args.run_dir is None or args.max_batches < 0):
        raise ValueError("--max-batches needs --run-dir and a value >= 0")
    if args.probe < 0:
        raise ValueError(f"--probe must be >= 0, got {args.probe}")
    if args.method == "memit" and isinstance(parse_layers(args.layers), int):
        raise ValueError(f"--layers {args.layers!r}: MEMIT edits a range of layers; give L1-L2, auto or locate")


def _batch(args: argparse.Namespace) -> int:
    if args.method == "memit":
        return args.batch_size or DEFAULT_MEMIT_BATCH
    return args.batch_size or 1 if args.method in RUN_METHODS else 1


def _memory_hparams(args: argparse.Namespace, model: Any) -> Any:
    """GRACE / WISE hyperparameters: the model's defaults, ``--key`` for GRACE."""
    from knowscope.editing.editors import get_editor

    return get_editor(args.method).hparams.for_model(model, **({"key": args.key} if args.key else {}))


def _editor(args: argparse.Namespace, model: Any, layers: Any) -> Any:
    """A function ``facts -> EditResult`` for the method (the model's current weights are the base)."""
    from knowscope.editing import memit
    from knowscope.editing.editors import get_editor

    editor = get_editor(args.method)
    if editor.name == "memit":
        if args.sequential:
            return memit.SequentialMEMIT(model, layers=layers, null_space=args.null_space).edit
        return lambda facts: editor(model, facts, layers=layers, null_space=args.null_space)
    if editor.memory:
        hp = _memory_hparams(args, model)
        return lambda facts: editor(model, facts, layers=layers, hparams=hp)
    return lambda facts: editor(model, facts, layers=layers)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.editing.evaluation import EditMetrics, evaluate, pre_edit_predictions
    from knowscope.editing.session import EditSession

    start = time.perf_counter()
    _check_args(args)
    layers = parse_layers(args.layers)
    facts = read_facts(args.data)
    if args.limit is not None:
        facts = facts[: args.limit]
    if not facts:
        raise ValueError(f"no facts to edit in {args.data or 'the bundled facts'}")
    model = load_from_args(args)
    eval_kwargs = dict(fluency=not args.no_fluency, max_out_len=args.gen_len, generation=not args.no_generation)

    session = EditSession(model)
    # specificity is always against the unedited model: take its predictions before any edit
    stage(f"the unedited model's predictions on the evaluation prompts of {len(facts)} facts")
    reference = pre_edit_predictions(model, facts, generation=not args.no_generation)
    if args.run_dir is not None:
        return _run_dir(args, model, facts, layers, session, reference, eval_kwargs, start)
    edit = _editor(args, model, layers)
    batch = _batch(args)
    groups = [facts[i : i + batch] for i in range(0, len(facts), batch)]

    stage(f"{args.method.upper()}: {len(facts)} facts in {len(groups)} edit(s)"
          + (", applied one after another" if args.sequential else ", each evaluated and undone")
          + (" (ROME/MEMIT compute key statistics once per layer on a first run, then read them from the cache)"
             if args.method in ("rome", "memit") else ""))
    results = []
    rows: list[dict[str, Any]] = []
    edit_seconds = 0.0
    notes: dict[str, Any] = {}
    for n, group in enumerate(groups, 1):
        t0 = time.perf_counter()
        result = edit(group)
        edit_seconds += time.perf_counter() - t0
        results.append(result)
        if args.sequential:
            session.apply(result)
            what = repr(group[0].subject) if len(group) == 1 else f"{len(group)} facts"
            print(f"[{n}/{len(groups)}] edited {what} ({time.perf_counter() - t0:.1f} s); evaluated at the end",
                  flush=True)
        else:
            with session.temporary(result):
                metrics = evaluate(model, group, reference=reference, **eval_kwargs)
            rows.extend(metrics.per_fact)
            notes = metrics.notes
            _progress(n, len(groups), group, metrics)
    if args.sequential:
        stage(f"evaluating all {len(facts)} facts on the edited model")
        metrics = evaluate(model, facts, reference=reference, **eval_kwargs)
    else:
        metrics = EditMetrics.from_rows(rows, notes)

    used_layers = sorted({layer for r in results for layer in r.layers})
    saved = _save(args.save, session, results, metrics, args.sequential) if args.save else None
    if args.sequential:
        session.rollback()
    _print_summary(args, model, metrics, used_layers, len(facts))
    return _report(args, model, metrics, layers=used_layers, n_edits=len(facts), n_edit_calls=len(results),
                   batch=batch, hparams=results[0].hparams if results else {}, edit_seconds=edit_seconds,
                   start=start, saved=saved)


def _report(args: argparse.Namespace, model: Any, metrics: Any, *, layers: list[int], n_edits: int,
            n_edit_calls: int, batch: int, hparams: dict[str, Any], edit_seconds: float, start: float,
            saved: str | None, **extra: Any) -> dict[str, Any]:
    """The command's JSON: the run's settings and, when anything was edited, its metrics."""
    return {
        "method": args.method,
        "model": model.name,
        "fingerprint": model.fingerprint,
        "data": args.data or "bundled",
        "layers": layers,
        "n_edits": n_edits,
        "n_edit_calls": n_edit_calls,
        "batch_size": batch,
        "sequential": args.sequential,
        "null_space": args.null_space,
        **extra,
        "metrics": metrics.flat() if metrics is not None else {},
        "protocols": {"counterfact": metrics.counterfact(), "easyedit": metrics.easyedit(),
                      "generation": metrics.generation()} if metrics is not None else {},
        "notes": metrics.notes if metrics is not None else {},
        "hparams": hparams,
        "edit_seconds": edit_seconds,
        "seconds": time.perf_counter() - start,
        "saved": saved,
        "per_fact": metrics.per_fact if metrics is not None else [],
    }


def read_facts(data: str | None) -> list[Any]:
    """``--data``: a fact file, or ``bundled`` / ``bundled:NAME`` (a bundled set; default: the 214 facts)."""
    from knowscope.facts import BUNDLED_SETS, load_bundled_facts, load_facts

    if data is None or data == "bundled":
        return load_bundled_facts()
    if data.startswith("bundled:"):
        name = data.split(":", 1)[1]
        if name not in BUNDLED_SETS:
            raise ValueError(f"--data {data!r}: no bundled set {name!r}; valid: "
                             + ", ".join(f"bundled:{n}" for n in BUNDLED_SETS))
        return load_bundled_facts(name=name)
    return load_facts(data)


def _probe(args: argparse.Namespace, facts: list[Any]) -> list[Any]:
    """The monitor's probe: ``--probe`` facts whose subjects are not edited (from ``--probe-data`` or bundled)."""
    from knowscope.facts import load_bundled_facts, load_facts

    if args.probe == 0:
        return []
    edited = {f.subject for f in facts}
    pool = load_facts(args.probe_data) if args.probe_data else load_bundled_facts(name="extended")
    probe = [f for f in pool if f.subject not in edited][-args.probe :]  # from the end: runs edit from the front
    if len(probe) < args.probe:
        raise ValueError(f"--probe {args.probe}: only {len(probe)} facts in "
                         f"{args.probe_data or 'the bundled extended set'} name a subject that is not edited")
    return probe


def _run_dir(args: argparse.Namespace, model: Any, facts: list[Any], layers: Any, session: Any, reference: Any,
             eval_kwargs: dict[str, Any], start: float) -> dict[str, Any]:
    """``--sequential --run-dir``: a resumable, monitored run; then every edit evaluated together."""
    from dataclasses import replace

    from knowscope.editing.evaluation import evaluate
    from knowscope.editing.hparams import MEMITHyperParams
    from knowscope.editing.layers import resolve_layers as resolve_spec
    from knowscope.editing.memit import resolve_layers
    from knowscope.editing.sequential import CollapseMonitor, load_run_edits, run_sequential
    from knowscope.editing.ultraedit import UltraEditHyperParams

    batch = _batch(args)
    if args.method in MEMORY_METHODS:
        hp = _memory_hparams(args, model)
        if layers is not None:
            if not isinstance(layers, int):
                raise ValueError(f"--layers {args.layers!r}: {args.method} keeps its memory at one layer; give L")
            hp = replace(hp, layer=layers)
        used_layers = [hp.layer]
    elif args.method == "ultraedit":
        hp = UltraEditHyperParams.for_model(model)
        hp = replace(hp, layers=tuple(resolve_spec(model, facts[:batch], layers, hp.layers, method="UltraEdit")))
        used_layers = list(hp.layers)
    else:
        hp = MEMITHyperParams.for_model(model)
        # fixed before the first batch, so a resumed run edits the same layers ("auto"/"locate" choose on batch 1)
        hp = replace(hp, layers=tuple(resolve_layers(model, facts[:batch], layers, hp)))
        used_layers = list(hp.layers)
    probe = _probe(args, facts)
    monitor = CollapseMonitor(probe=probe, stop_on_warning=args.stop_on_warning,
                              fluency_prompts=0 if args.no_fluency else 4) if probe else None
    run = run_sequential(model, facts, batch, args.run_dir, null_space=args.null_space, hparams=hp,
                         monitor=monitor, max_batches=args.max_batches, method=args.method)
    for rec in run.records[1:]:
        sig = rec["signals"]
        print(f"[batch {rec['batch']}] {rec['edits']} edits: efficacy {sig.get('efficacy_all') or 0:.3f}"
              + (f"  retention {sig['retention_first']:.3f}  neighbourhood {sig['neighborhood']:.3f}  "
                 f"locality {sig['locality']:.3f}" if monitor is not None else "")
              + ("  WARN: " + "; ".join(rec["warnings"]) if rec["warnings"] else ""), flush=True)
    edits = load_run_edits(args.run_dir)
    for result in edits:
        session.apply(result)
    edited = facts[: run.records[-1]["edits"]]
    saved = None
    try:
        metrics = evaluate(model, edited, reference=reference, **eval_kwargs) if edited else None
        if args.save and metrics is not None:
            saved = _save(args.save, session, edits, metrics, True)
    finally:
        session.rollback()
    if metrics is not None:
        _print_summary(args, model, metrics, used_layers, len(edited))
    return _report(args, model, metrics, layers=used_layers, n_edits=len(edited), n_edit_calls=len(edits),
                   batch=batch, hparams=hp.to_dict(), edit_seconds=sum(r["seconds"] for r in run.records),
                   start=start, saved=saved, n_facts=len(facts), run_dir=str(args.run_dir), stopped=run.stopped,
                   monitor=run.records)


def _progress(n: int, total: int, group: list[Any], metrics: Any) -> None:
    what = repr(group[0].subject) if len(group) == 1 else f"{len(group)} facts"
    gen = f"  gen_efficacy {metrics.gen_efficacy:.2f}" if metrics.gen_efficacy is not None else ""
    print(f"[{n}/{total}] {what}: efficacy {metrics.efficacy_score:.2f}  rewrite_acc {metrics.rewrite_acc:.2f}{gen}",
          flush=True)


def _save(path: str, session: Any, results: list[Any], metrics: Any, sequential: bool) -> str:
    """Write the run as one group, atomically: a second save replaces the whole group (no stale edits)."""
    from knowscope.results import atomic_directory, write_group_marker

    with atomic_directory(path, "group:edit_run") as out:
        if sequential:
            session.save(out / "session")
        else:
            for i, result in enumerate(results):
                result.save(out / "edits" / f"{i:04d}")
        metrics.save(out / "metrics")
        write_group_marker(out, "edit_run", {"n_edits": len(results), "sequential": sequential})
    return str(path)


def _print_summary(args: argparse.Namespace, model: Any, metrics: Any, layers: list[int], n: int) -> None:
    mode = "sequential" if args.sequential else "independent"
    if args.null_space:
        mode += ", null-space"
    print(f"\n{args.method.upper()} on {model.name}: {n} facts ({mode}), layers {layers}")
    print(metrics.summary())
