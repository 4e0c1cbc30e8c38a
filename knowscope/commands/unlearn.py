"""``knowscope unlearn``: make the model stop giving a forget set's answers while it keeps a retain set's,
with gradient ascent, NPO, ReLearn or MemFlex, and score it.

The forget / retain set is the bundled one (``--data bundled``, ``bundled:train``, ``bundled:val``; built from
what the default model knows by ``scripts/build_unlearn.py``) or a KnowUnDo JSON file: one file holding both
(``{"unlearn": ..., "retention": ...}``), or KnowUnDo's unlearn split with ``--retain`` its retention split.
The model is measured before (the reference for ReLearn's KFR / KRR and the fluency ratio) and after; the
edit is undone before the command returns. ``--save DIR`` writes ``DIR/edit`` (an :class:`EditResult` that
``EditSession.apply`` re-applies) and ``DIR/metrics``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from knowscope.commands import add_model_argument, load_from_args, stage
from knowscope.commands.edit import parse_layers

NAME = "unlearn"
HELP = ("unlearn a forget set while keeping a retain set (gradient ascent, NPO, ReLearn, MemFlex, keyed forgetting), "
        "and score it")
ORDER = 61
METHODS = ("ga", "npo", "relearn", "memflex", "keyed")
#: the training flags (every method but keyed, which writes FactKey entries and trains no weights)
TRAINING = ("lr", "max_steps", "stop_forget", "stop_retain", "retain_weight", "retain_projection")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--method", required=True, choices=METHODS, help="unlearning method")
    parser.add_argument("--data", default="bundled",
                        help="forget / retain set: bundled (both halves), bundled:train, bundled:val, or a KnowUnDo "
                             "JSON file")
    parser.add_argument("--retain", default=None, metavar="FILE",
                        help="KnowUnDo's retention split, when --data is its unlearn split")
    parser.add_argument("--split", choices=("all", "train", "val"), default="all",
                        help="which half of a file's train / val lists to use (default both)")
    parser.add_argument("--limit", type=int, default=None, help="unlearn the first N forget items")
    parser.add_argument("--layers", default=None, help="L or L1-L2: the layers whose weights may change (default all)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    parser.add_argument("--max-steps", type=int, default=None, help="most optimiser steps (default: the method's)")
    parser.add_argument("--stop-forget", type=float, default=None,
                        help="stop once this share of the forget prompts no longer generate their answer (default 1.0)")
    parser.add_argument("--stop-retain", type=float, default=None,
                        help="and only once this share of the retain prompts still give their answer (default: "
                             "the method's)")
    parser.add_argument("--retain-weight", type=float, default=None, help="weight of the retain set's NLL")
    parser.add_argument("--retain-projection", type=float, default=None, metavar="ENERGY",
                        help="confine each step to the input directions the retain sequences do not use (share of "
                             "their energy removed, in (0, 1]; default: off)")
    parser.add_argument("--max-groups", type=int, default=None, help="MemFlex: most parameter groups to train")
    parser.add_argument("--objective", choices=("relearn", "ga", "npo"), default=None,
                        help="MemFlex: the objective the located groups are trained with (default npo)")
    parser.add_argument("--granularity", choices=("matrix", "neuron"), default=None,
                        help="MemFlex: locate whole weight matrices (default) or MLP neurons")
    parser.add_argument("--target", default=None,
                        help="keyed: what each forget prompt answers instead: relation (default: the likeliest "
                             "other answer of its relation), alternative (the model's next likeliest word) or a "
                             "fixed text")
    parser.add_argument("--save", metavar="DIR", default=None, help="save the edit and the metrics to DIR")
    parser.add_argument("--no-fluency", action="store_true", help="skip the fluency (generation entropy) score")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.method != "memflex" and (args.max_groups is not None or args.objective is not None
                                     or args.granularity is not None):
        raise ValueError(f"--max-groups, --objective and --granularity are for --method memflex, not {args.method}")
    if args.method != "keyed" and args.target is not None:
        raise ValueError(f"--target is for --method keyed, not {args.method}")
    if args.method == "keyed":
        return _keyed_overrides(args)
    if args.retain is not None and str(args.data).startswith("bundled"):
        raise ValueError("--retain goes with a KnowUnDo unlearn-split file in --data, not a bundled set")
    out: dict[str, Any] = {}
    for flag, key in (("lr", "lr"), ("max_steps", "max_steps"), ("stop_forget", "stop_forget"),
                      ("stop_retain", "stop_retain"), ("retain_weight", "retain_weight"),
                      ("retain_projection", "retain_projection"), ("max_groups", "max_groups"),
                      ("objective", "objective"), ("granularity", "granularity")):
        if getattr(args, flag) is not None:
            out[key] = getattr(args, flag)
    layers = parse_layers(args.layers)
    if isinstance(layers, str):
        raise ValueError(f"--layers {args.layers!r}: unlearning takes L or L1-L2")
    if layers is not None:
        out["layers"] = (layers,) if isinstance(layers, int) else tuple(layers)
    return out


def _keyed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    used = [f"--{f.replace('_', '-')}" for f in TRAINING if getattr(args, f) is not None]
    if used:
        raise ValueError(f"{', '.join(used)}: keyed forgetting trains no weights (it writes one FactKey entry per "
                         "forget item); its settings are --target and --layers L")
    out: dict[str, Any] = {} if args.target is None else {"target": args.target}
    if args.layers is not None:
        layer = parse_layers(args.layers)
        if not isinstance(layer, int):
            raise ValueError(f"--layers {args.layers!r}: keyed forgetting keeps its memory at one layer; give L")
        out["layer"] = layer
    return out


def read_set(data: str, retain: str | None, split: str) -> Any:
    """``--data`` / ``--retain`` / ``--split`` to an :class:`UnlearnSet`."""
    from knowscope.editing.unlearning import load_bundled_unlearn, load_unlearn_set

    if data == "bundled":
        return load_bundled_unlearn(split)
    if data.startswith("bundled:"):
        half = data.split(":", 1)[1]
        if half not in ("train", "val", "all"):
            raise ValueError(f"--data {data!r}: valid bundled sets are bundled, bundled:train, bundled:val")
        return load_bundled_unlearn(half)
    return load_unlearn_set(data, split, retain)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.editing.session import EditSession
    from knowscope.editing.unlearning import UnlearnSet, evaluate_unlearning, get_unlearner, unlearn_reference

    start = time.perf_counter()
    overrides = _overrides(args)
    uset = read_set(args.data, args.retain, args.split)
    if args.limit is not None:
        uset = UnlearnSet(uset.forget[: args.limit], uset.retain, name=uset.name)
    unlearner = get_unlearner(args.method)
    model = load_from_args(args)
    hp = unlearner.hparams.for_model(model, **overrides)
    fluency = not args.no_fluency
    stage(f"the unedited model's answers on {len(uset.forget)} forget and {len(uset.retain)} retain items")
    reference = unlearn_reference(model, uset, fluency=fluency)
    before = evaluate_unlearning(model, uset, reference, fluency=fluency)
    stage(f"{unlearner.label}: " + ("one FactKey entry per forget item" if args.method == "keyed" else
                                     f"training until the forget answers are gone (at most {hp.max_steps} steps)"))
    t0 = time.perf_counter()
    result = unlearner.edit(model, uset.forget, uset.retain, hparams=hp)
    edit_seconds = time.perf_counter() - t0
    session = EditSession(model)
    session.apply(result)
    try:
        stage("evaluating the unlearned model")
        after = evaluate_unlearning(model, uset, reference, fluency=fluency)
        saved = _save(args.save, result, after) if args.save else None
    finally:
        session.rollback()
    what = (f"{len(uset.forget)} FactKey entries at layer {result.layers[0]}" if result.is_memory_edit else
            f"{result.extra['steps']} steps, {len(result.deltas)} parameter groups")
    print(f"\n{unlearner.label} on {model.name}: {uset.summary()}, {what}")
    print("before:\n" + before.summary())
    print("after:\n" + after.summary())
    return {
        "method": args.method, "model": model.name, "fingerprint": model.fingerprint, "data": args.data,
        "n_forget": len(uset.forget), "n_retain": len(uset.retain), "hparams": hp.to_dict(),
        "steps": result.extra["steps"], "parameter_groups": sorted(result.deltas),
        "located": result.extra.get("located"), "metrics": after.values, "before": before.values,
        "edit_seconds": edit_seconds, "seconds": time.perf_counter() - start, "saved": saved,
        "per_item": after.per_item,
    }


def _save(path: str, result: Any, metrics: Any) -> str:
    from knowscope.results import atomic_directory, write_group_marker

    with atomic_directory(path, "group:unlearn_run") as out:
        result.save(out / "edit")
        metrics.save(out / "metrics")
        write_group_marker(out, "unlearn_run", {"method": result.method})
    return str(path)
