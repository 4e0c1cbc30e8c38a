"""``knowscope demo``: the main job on the default model, end to end.

Load the model, show what it knows on a few bundled facts, trace one fact and locate the layer to
edit, find the relation's knowledge circuit, edit the fact with ROME, verify before vs after (prompt,
paraphrases, neighbours, metrics, activation shift, circuit diff), undo, and save the runs for the
viewer (``knowscope view RUNS``).

The runs are saved together at the end, as one group (``knowscope-group.json`` of kind ``demo``), so a
second demo into the same folder replaces the first one's output whole; a folder with files the demo
did not write is refused before any work.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--facts", type=int, default=5, help="how many bundled facts to show (default 5)")
    parser.add_argument("--out", default="runs/demo", help="where to save the demo's runs (default runs/demo)")
    parser.add_argument("--samples", type=int, default=3, help="noise samples per causal trace (default 3)")
    parser.add_argument("--locate-facts", type=int, default=6, help="facts traced to locate the layer (default 6)")
    parser.add_argument("--circuit-facts", type=int, default=3, help="facts in the knowledge circuit (default 3)")


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.circuits import knowledge_circuit, locate, trace
    from knowscope.circuits.batches import make_batch
    from knowscope.editing import EditSession, rome
    from knowscope.editing.layers import measured_layer
    from knowscope.facts import Fact, load_bundled_facts
    from knowscope.probes import logit_lens
    from knowscope.probes.report import edit_report

    start = time.time()
    out = Path(args.out)
    check_out(out)
    _section("load")
    model = load_from_args(args)
    print(f"  {model}  fingerprint {model.fingerprint}")
    facts = load_bundled_facts()
    step = max(1, len(facts) // max(1, args.facts))
    shown = facts[::step][: args.facts]
    _section("what the model knows")
    knowledge = show_knowledge(model, shown)
    result: dict[str, Any] = {"model": model.name, "knowledge": knowledge, "runs": str(out)}

    fact = next(f for f in facts if f.subject == "Mexico") if any(f.subject == "Mexico" for f in facts) else facts[0]
    _section(f"causal trace: {fact.text!r} -> {fact.target_true!r}")
    traced = trace(model, fact.text, fact.subject, target=fact.true_continuation, samples=args.samples)
    for kind in traced.kinds:
        peak = traced.peak(kind)
        print(f"  {kind:<7} peak at layer {peak['layer']:>2}, token {traced.tokens[peak['token']]!r}")
    print(f"  P(answer): clean {traced.high_score:.3f}, subject noised {traced.low_score:.3f}")

    _section("locate the layer to edit")
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

    _section(f"knowledge circuit of relation {fact.relation_id} (EAP-IG)")
    batch = make_batch(model, relation[: args.circuit_facts], "swap", pool=facts)
    circuit = knowledge_circuit(model, batch, method="eap-ig")
    print(f"  {circuit.n_edges} of {circuit.n_edges_total} edges, faithfulness {circuit.faithfulness:.2f} "
          f"({len(circuit.nodes())} nodes)")

    _section(f"ROME edit at layer {choice.layer}: {fact.subject} -> {fact.target_new!r}")
    session = EditSession(model)
    edit = rome.edit(model, [fact], layers=choice.layer)
    answers = [fact.true_continuation, Fact.continuation(fact.target_new)]
    lens_before = logit_lens(model, fact.text, targets=answers)  # for the viewer's Probes page: before / after
    session.apply(edit)
    lens_after = logit_lens(model, fact.text, targets=answers)
    lens_after.meta["model_state"] = f"edited (ROME at layer {choice.layer})"
    report = edit_report(session, fact, diff=True, diff_input=batch, diff_before=circuit)
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
    try:
        replaced = save_runs(out, [lambda d: traced.save(d / "trace"), lambda d: choice.save(d / "locate"),
                                   lambda d: circuit.save(d / "circuit"), lambda d: report.save(d, session),
                                   lambda d: lens_before.save(d / "lens"),
                                   lambda d: lens_after.save(d / "lens_edited")])
    finally:
        session.undo()
    back = model.top_k(fact.text, 1)[0]
    print(f"  undone: {fact.text!r} -> {back[0]!r} again")

    result.update(
        trace={"peak": {k: traced.peak(k) for k in traced.kinds}, "low": traced.low_score, "high": traced.high_score},
        located_layer=choice.layer,
        circuit={"n_edges": circuit.n_edges, "faithfulness": circuit.faithfulness, "nodes": len(circuit.nodes())},
        edit={"fact": fact.text, "target_new": fact.target_new, "layer": choice.layer, "metrics": flat},
    )
    result["seconds"] = time.time() - start
    print()
    if replaced:
        print(f"replaced the earlier demo's output in {out}/")
    print(f"saved the runs under {out}/ (trace, locate, circuit, edit, metrics, predictions, shift, circuit_diff, "
          "lens, lens_edited); "
          f"done in {result['seconds']:.1f} s")
    print(f"open them in the viewer:\n  knowscope view {out}")
    return result
