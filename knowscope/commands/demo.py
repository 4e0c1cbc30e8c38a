"""``knowscope demo``: the main job on the default model, end to end.

Load the model, show what it knows on a few bundled facts, trace one fact and locate the layer to
edit, find the relation's knowledge circuit, compute ROME's key statistics (the first run's heavy step:
it says what it computes and how long it takes; cached afterwards), run a small layer sweep (ROME on two
facts at two or three layers, in this process: the viewer's Sweeps page), fit linear probes by layer
(true vs counterfactual completions: the Probes page), edit the fact with ROME, verify before vs after
(prompt, paraphrases, neighbours, metrics, logit lens, activation shift, circuit diff), undo, and save
the runs for the viewer (``knowscope view RUNS``). Each step prints its time; ``--json`` records the wall
and CPU seconds of each (``timings``; ``benchmarks/bench_first_run.py`` reads them).

The runs are saved together at the end, as one group (``knowscope-group.json`` of kind ``demo``), so a
second demo into the same folder replaces the first one's output whole; a folder with files the demo
did not write is refused before any work.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from knowscope.commands import add_model_argument, load_from_args

NAME = "demo"
HELP = "run the main job on the default model: what it knows, trace, locate, edit, verify, undo"
ORDER = 1
CHECKS_OWN_OUTPUT = True  # --out is checked here: an earlier demo's output there is replaced
GROUP = "demo"
#: the result folders a demo writes under --out and their kinds (``circuit_diff`` only when it could be computed):
#: how the output of a demo saved before the group marker is recognised
PARTS = {"trace": "trace", "locate": "layer_choice", "circuit": "circuit", "edit": "edit_session",
         "metrics": "edit_metrics", "predictions": "predictions", "shift": "activation_shift",
         "circuit_diff": "circuit_diff"}
#: what a demo saves under --out (``sweep.sqlite`` is the Sweeps page's store)
SAVED = ("trace", "locate", "circuit", "edit", "metrics", "predictions", "shift", "circuit_diff", "lens",
         "lens_edited", "probe", "sweep.sqlite")
#: the first run's key statistics on the default model: the demo says so before computing them
#: (measured by benchmarks/bench_first_run.py; the statistics are cached afterwards)
STATS_ESTIMATE = "about 1.5 minutes of one laptop core (longer on a busy machine)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--facts", type=int, default=5, help="how many bundled facts to show (default 5)")
    parser.add_argument("--out", default="runs/demo", help="where to save the demo's runs (default runs/demo)")
    parser.add_argument("--samples", type=int, default=3, help="noise samples per causal trace (default 3)")
    parser.add_argument("--locate-facts", type=int, default=6, help="facts traced to locate the layer (default 6)")
    parser.add_argument("--circuit-facts", type=int, default=3, help="facts in the knowledge circuit (default 3)")
    parser.add_argument("--sweep-facts", type=int, default=2,
                        help="facts in the small layer sweep (each edited at 2-3 layers; default 2)")
    parser.add_argument("--probe-facts", type=int, default=24,
                        help="facts the linear probes are fitted on (default 24)")


def own_output(out: Path) -> bool:
    """True when ``out`` holds an earlier demo's output: the demo's group marker, or (a demo saved before
    the marker) every result folder a demo writes, of its kind, and nothing else."""
    from knowscope.results import written_kind

    if written_kind(out) == f"group:{GROUP}":
        return True
    if out.is_symlink() or not out.is_dir():
        return False
    names = {e.name for e in out.iterdir()}
    return set(PARTS) - {"circuit_diff"} <= names <= set(PARTS) and all(
        not (out / n).is_symlink() and written_kind(out / n) == PARTS[n] for n in names)


def check_out(out: Path) -> None:
    """Refuse a bad ``--out`` before any work (an earlier demo's output is fine: it is replaced)."""
    from knowscope.results import check_writable

    if not own_output(out):
        check_writable(out, f"group:{GROUP}")


def save_runs(out: str | Path, savers: Sequence[Callable[[Path], Any]]) -> bool:
    """Save the demo's runs into ``out`` at once: each of ``savers`` writes its part into the new folder.

    An earlier demo's output at ``out`` is replaced whole (anything else knowscope did not write is
    refused, as every save is); returns whether one was replaced.
    """
    from knowscope.results import atomic_directory, write_group_marker

    out = Path(out)
    replaced = own_output(out)
    with atomic_directory(out, f"group:{GROUP}", check=not replaced) as tmp:
        for save in savers:
            save(tmp)
        write_group_marker(tmp, GROUP, {"parts": sorted(p.name for p in tmp.iterdir() if p.is_dir())})
    return replaced


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


class StepTimer:
    """Wall and CPU seconds of each step of the demo: the ``timings`` entry of its JSON, and a line per step.

    CPU seconds are this process's (all its threads), so they stay comparable on a loaded machine where the
    wall time does not.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    @contextmanager
    def step(self, name: str, title: str) -> Iterator[None]:
        _section(title)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            row = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
            self.rows[name] = row
            print(f"  ({name}: {row['wall_s']:.1f} s)")


def show_knowledge(model: Any, facts: list[Any]) -> list[dict[str, Any]]:
    """Print the top-3 next tokens of each fact's prompt and whether the top one is the true object."""
    rows = []
    for fact in facts:
        top = model.top_k(fact.text, 3)
        true_id = model.encode_target(fact.true_continuation)[0]
        ok = top[0][2] == true_id
        shown = ", ".join(f"{t!r} {p:.2f}" for t, p, _ in top)
        print(f"  [{'ok' if ok else '--'}] {fact.text!r} -> {shown}   (true: {fact.target_true!r})")
        rows.append({"prompt": fact.text, "top": [[t, p] for t, p, _ in top], "correct": ok})
    return rows


def _stats_step(model: Any, layers: list[int]) -> dict[str, Any]:
    """Compute (or read from the cache) ROME's key statistics for ``layers``, saying what and why first."""
    from knowscope.editing.hparams import ROMEHyperParams
    from knowscope.editing.stats import key_stats, missing_stats
    from knowscope.paths import cache_dir

    hp = ROMEHyperParams.for_model(model)
    todo = missing_stats(model, layers, n_tokens=hp.stats_tokens, source=hp.stats_source)
    if todo:
        print(f"  ROME weights its update by E[k k^T], the second moment of the MLP keys at the edited layer, so "
              f"that an edit\n  disturbs the keys the model normally sees as little as possible. Estimated from "
              f"{hp.stats_tokens:,} tokens\n  the model samples itself, for layers {todo}: {STATS_ESTIMATE}, once; "
              f"cached\n  under {cache_dir()} (later runs read it in a second)")
    else:
        print(f"  key statistics of layers {layers} read from the cache ({hp.stats_tokens:,} sampled tokens)")
    key_stats(model, layers, n_tokens=hp.stats_tokens, source=hp.stats_source)
    return {"layers": layers, "computed": todo, "n_tokens": hp.stats_tokens}


def sweep_layers(located: int, default: int, n_layers: int) -> list[int]:
    """The demo's small sweep: the located layer, ROME's default layer for the model and one a third deeper."""
    return sorted({located, default, min(n_layers - 1, located + max(1, n_layers // 3))})


def run_sweep_into(model: Any, facts: list[Any], layers: list[int], samples: int, folder: Path) -> Path:
    """A small ROME sweep (``facts`` x ``layers``, in this process) into ``folder/sweep.sqlite``; returns the store."""
    from knowscope.sweep import SweepSpec, run_sweep

    store = folder / "sweep.sqlite"
    spec = SweepSpec(model.name, facts, methods=("rome",), layers=layers, trace={"samples": samples})
    run_sweep(spec, store, use_ray=False, workers=1, model=model)
    return store


def probe_facts(model: Any, facts: list[Any], n: int) -> Any:
    """Linear probes at six evenly spaced layers: ``n`` facts' prompts completed with the true object vs with
    the counterfactual one (the residual at the object's token; held-out accuracy)."""
    from knowscope.probes import probe_layers
    from knowscope.sweep import spread

    sample = spread(facts, n)
    positive = [f"{f.text} {f.target_true}" for f in sample]
    negative = [f"{f.text} {f.target_new}" for f in sample]
    every = max(1, model.arch.n_layers // 6)
    report = probe_layers(model, positive, negative, layers=range(0, model.arch.n_layers, every), test_fraction=0.3)
    report.meta["about"] = "true vs counterfactual completion of the bundled facts (residual at the object's token)"
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile

    from knowscope.circuits import knowledge_circuit, locate, trace
    from knowscope.circuits.batches import make_batch
    from knowscope.editing import EditSession, rome
    from knowscope.editing.hparams import ROMEHyperParams
    from knowscope.editing.layers import measured_layer
    from knowscope.facts import Fact, load_bundled_facts
    from knowscope.probes import logit_lens
    from knowscope.probes.report import edit_report
    from knowscope.sweep import SweepResult

    start = time.time()
    for name, least in (("facts", 1), ("samples", 1), ("locate_facts", 1), ("circuit_facts", 1), ("sweep_facts", 1),
                        ("probe_facts", 4)):
        if getattr(args, name) < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    out = Path(args.out)
    check_out(out)
    steps = StepTimer()
    with steps.step("load", "load"):
        model = load_from_args(args)
        print(f"  {model}  fingerprint {model.fingerprint}")
        facts = load_bundled_facts()
    step = max(1, len(facts) // max(1, args.facts))
    shown = facts[::step][: args.facts]
    with steps.step("knowledge", "what the model knows"):
        knowledge = show_knowledge(model, shown)
    result: dict[str, Any] = {"model": model.name, "knowledge": knowledge, "runs": str(out)}

    fact = next(f for f in facts if f.subject == "Mexico") if any(f.subject == "Mexico" for f in facts) else facts[0]
    with steps.step("trace", f"causal trace: {fact.text!r} -> {fact.target_true!r}"):
        traced = trace(model, fact.text, fact.subject, target=fact.true_continuation, samples=args.samples)
        for kind in traced.kinds:
            peak = traced.peak(kind)
            print(f"  {kind:<7} peak at layer {peak['layer']:>2}, token {traced.tokens[peak['token']]!r}")
        print(f"  P(answer): clean {traced.high_score:.3f}, subject noised {traced.low_score:.3f}")

    with steps.step("locate", "locate the layer to edit"):
        relation = [f for f in facts if f.relation_id == fact.relation_id][: args.locate_facts]
        choice = locate(model, relation, kind="mlp", samples=args.samples)
        print(f"  MLP indirect effect at the last subject token peaks at layer {choice.layer} "
              f"(over {choice.n_facts} facts of relation {fact.relation_id})")
        measured = measured_layer(model, "rome")
        if measured is not None:
            print(f"  a layer sweep of this model ({measured.n_facts} facts x {model.arch.n_layers} layers) measured "
                  f"ROME best at layer {measured.layer} ({measured.metric} {measured.value:.3f}; "
                  f"{measured.located_value:.3f} at its traced peak, layer {measured.located_layer}): "
                  "--layers auto edits there")

    with steps.step("circuit", f"knowledge circuit of relation {fact.relation_id} (EAP-IG)"):
        batch = make_batch(model, relation[: args.circuit_facts], "swap", pool=facts)
        circuit = knowledge_circuit(model, batch, method="eap-ig")
        print(f"  {circuit.n_edges} of {circuit.n_edges_total} edges, faithfulness {circuit.faithfulness:.2f} "
              f"({len(circuit.nodes())} nodes)")

    layers = sweep_layers(choice.layer, ROMEHyperParams.for_model(model).layer, model.arch.n_layers)
    with steps.step("key_stats", f"ROME's key statistics (layers {layers})"):
        result["key_stats"] = _stats_step(model, layers)

    scratch = Path(tempfile.mkdtemp(prefix="knowscope-demo-sweep-"))
    try:
        sweep_facts = relation[: args.sweep_facts]
        with steps.step("sweep", f"a small layer sweep: ROME on {len(sweep_facts)} facts x layers {layers}"):
            print("  each fact traced, then edited at each layer, evaluated and undone (knowscope sweep runs "
                  "the full grid)")
            store = run_sweep_into(model, sweep_facts, layers, args.samples, scratch)
            summary = SweepResult.load(store).summary("rome")
            print(f"  best layer by CounterFact score: {summary['best_layer']}; located: {summary['located_layer']}")

        with steps.step("probe", "linear probes by layer: true vs counterfactual completion"):
            probes = probe_facts(model, facts, args.probe_facts)
            i, acc = probes.best("logistic")
            print(f"  held-out accuracy of the logistic probe peaks at {acc:.2f} ({probes.hooks[i]}; "
                  f"{len(probes.hooks)} layers, {probes.meta['n_positive']} facts)")

        with steps.step("edit", f"ROME edit at layer {choice.layer}: {fact.subject} -> {fact.target_new!r}"):
            session = EditSession(model)
            edit = rome.edit(model, [fact], layers=choice.layer)
            answers = [fact.true_continuation, Fact.continuation(fact.target_new)]
            lens_before = logit_lens(model, fact.text, targets=answers)  # the Probes page's lens: before / after
            session.apply(edit)
        try:
            with steps.step("verify", "before vs after"):
                lens_after = logit_lens(model, fact.text, targets=answers)
                lens_after.meta["model_state"] = f"edited (ROME at layer {choice.layer})"
                report = edit_report(session, fact, diff=True, diff_input=batch, diff_before=circuit,
                                     step=lambda name: print(f"  {name} ...", flush=True))
                for row in report.predictions.rows[:6]:
                    print(f"  {row['kind']:<13} {row['prompt']!r:<58} {row['before']!r} -> {row['after']!r}")
                flat = report.metrics.flat()
                print("  " + "  ".join(f"{k}={flat[k]:.2f}" for k in ("efficacy_score", "paraphrase_score",
                                                                      "neighborhood_score", "locality_acc")))
                print(f"  activation shift: the residual stream moved most at layers {report.shift.top_layers(3)}")
                print(f"  logit lens at the last layer: {lens_before.top_tokens[-1][-1][0]!r} before, "
                      f"{lens_after.top_tokens[-1][-1][0]!r} after")
                if report.circuit_diff is not None:
                    s = report.circuit_diff.summary
                    print(f"  circuit after the edit: {s['n_gained']} edges gained, {s['n_lost']} lost, "
                          f"{s['n_reweighted']} re-weighted")
                else:
                    print(f"  circuit diff not computed: {report.circuit_diff_error}")
            with steps.step("save", f"save the runs under {out}/"):
                replaced = save_runs(out, [lambda d: traced.save(d / "trace"), lambda d: choice.save(d / "locate"),
                                           lambda d: circuit.save(d / "circuit"), lambda d: report.save(d, session),
                                           lambda d: lens_before.save(d / "lens"),
                                           lambda d: lens_after.save(d / "lens_edited"),
                                           lambda d: probes.save(d / "probe"),
                                           lambda d: shutil.copyfile(store, d / "sweep.sqlite")])
        finally:
            session.undo()
        back = model.top_k(fact.text, 1)[0]
        print(f"  undone: {fact.text!r} -> {back[0]!r} again")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result.update(
        trace={"peak": {k: traced.peak(k) for k in traced.kinds}, "low": traced.low_score, "high": traced.high_score},
        located_layer=choice.layer,
        circuit={"n_edges": circuit.n_edges, "faithfulness": circuit.faithfulness, "nodes": len(circuit.nodes())},
        edit={"fact": fact.text, "target_new": fact.target_new, "layer": choice.layer, "metrics": flat},
        sweep={"layers": layers, "n_facts": len(sweep_facts), "best_layer": summary["best_layer"],
               "located_layer": summary["located_layer"]},
        probe={"hooks": probes.hooks, "accuracy": probes.accuracy},
        timings=steps.rows,
    )
    result["seconds"] = time.time() - start
    print()
    if replaced:
        print(f"replaced the earlier demo's output in {out}/")
    print(f"saved the runs under {out}/ ({', '.join(SAVED)}); done in {result['seconds']:.1f} s")
    print("time by step: " + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in steps.rows.items()))
    print(f"open them in the viewer:\n  knowscope view {out}")
    return result
