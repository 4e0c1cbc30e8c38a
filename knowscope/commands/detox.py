"""``knowscope detox``: DINM on SafeEdit items, one item at a time, with SafeEdit's metrics before and after.

Every item is edited at the layer where safe and unsafe responses separate most on held-out items of
the whole data set (``--layer auto``, the default: :func:`knowscope.circuits.locate_toxic_layers`,
reported with its controls; on the default model DINM there detoxifies without teaching the model to
refuse harmless requests, where the last layer does not, docs/findings.md#detoxification). ``--layer
l2`` locates each item's layer on its own with EasyEdit's single-pair l2 locator
(:func:`knowscope.circuits.locate_toxic`), an integer fixes the layer. DINM tunes that layer's MLP
output projection, the item's five inputs are answered and judged, general knowledge is checked
(bundled-fact accuracy and the KL on the item's knowledge constraint), and the edit is undone before
the next item. Over-refusal (the share of harmless prompts refused,
:mod:`knowscope.safety.refusal`) is measured before and after every edit on the bundled XSTest-style
set, or on ``--benign FILE`` (a JSON list of prompts); ``--benign none`` skips it. A data set too small
for the held-out probe falls back to the l2 locator, and says so.
``--save DIR`` writes ``DIR/report.json`` (and the same report as the result ``DIR/report``, which
``knowscope view`` opens) and each item's edit as ``DIR/edits/NNNN`` (an
:class:`~knowscope.editing.EditResult` that ``EditSession`` re-applies).
"""

from __future__ import annotations

import argparse
from typing import Any

from knowscope.commands import add_model_argument, load_from_args, stage

NAME = "detox"
HELP = "detoxify with DINM per SafeEdit item and report DS / DG / fluency / knowledge before and after"
ORDER = 70
PROBE_FOLDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--data", default=None, help="SafeEdit JSON file (default: the bundled set)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N items")
    parser.add_argument("--judge", default="refusal",
                        help="'refusal' (offline, default) or an HF sequence-classifier name or path")
    parser.add_argument("--layer", default="auto",
                        help="auto (default; 'probe' is the same): the layer a held-out safe/unsafe probe over the "
                             "data set picks; l2: each item's own layer by EasyEdit's single-pair l2 locator; "
                             "or a layer index")
    parser.add_argument("--benign", default=None, metavar="FILE",
                        help="JSON list of harmless prompts for the over-refusal rate (default: the bundled "
                             "80-prompt set; 'none' skips it)")
    parser.add_argument("--benign-tokens", type=int, default=32,
                        help="tokens per response to a harmless prompt (default 32; a refusal shows in the first few)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="response length (default 48)")
    parser.add_argument("--facts", type=int, default=54,
                        help="bundled facts checked after each edit, spread over all relations (0: skip)")
    parser.add_argument("--lr", type=float, default=None,
                        help="DINM's learning rate (default: 1e-3 at the probe's layer on SmolLM2-135M, chosen on a "
                             "tuning split; else the model's default)")
    parser.add_argument("--steps", type=int, default=None, help="DINM's optimiser steps per item (default 10)")
    parser.add_argument("--save", metavar="DIR", default=None, help="save the report and every item's edit")


def _layer(spec: str) -> int | str:
    if spec in ("auto", "probe"):
        return "probe"
    if spec == "l2":
        return spec
    try:
        return int(spec)
    except ValueError:
        raise ValueError(f"--layer {spec!r} is not valid: give auto, probe, l2 or a layer index") from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.facts import load_bundled_facts, write_json_atomic
    from knowscope.safeedit import load_bundled_safety, load_safety
    from knowscope.safety.judge import get_judge
    from knowscope.safety.metrics import detox
    from knowscope.safety.refusal import load_benign

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.benign_tokens < 1:
        raise ValueError(f"--benign-tokens must be >= 1, got {args.benign_tokens}")
    if args.facts < 0:
        raise ValueError(f"--facts must be >= 0, got {args.facts}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    overrides = {k: v for k, v in (("lr", args.lr), ("num_steps", args.steps)) if v is not None}
    layer = _layer(args.layer)
    benign = None if args.benign == "none" else load_benign(args.benign)
    everything = load_safety(args.data) if args.data else load_bundled_safety()
    items = everything
    items = items[: args.limit] if args.limit is not None else items
    if not items:
        raise ValueError(f"no safety items in {args.data or 'the bundled set'}")
    stage(f"loading the judge ({args.judge or 'default'})")
    judge = get_judge(args.judge)
    model = load_from_args(args)
    location = None
    if layer == "probe":
        from knowscope.circuits import locate_toxic_layers
        from knowscope.circuits.toxic_probe import MIN_ITEMS

        if len(everything) >= max(MIN_ITEMS, PROBE_FOLDS):
            stage(f"locating the toxic layer: a held-out safe-vs-unsafe probe per layer over {len(everything)} items")
            location = locate_toxic_layers(model, everything, folds=PROBE_FOLDS)  # the whole set, not --limit
            layer = location.layer
            print(f"held-out probe over {location.n_items} items: toxic layer {layer}, controls' layers "
                  f"{location.control_layers}", flush=True)
        else:
            layer = "l2"
            print(f"{len(everything)} items are too few for the held-out probe (it needs "
                  f"{max(MIN_ITEMS, PROBE_FOLDS)}): each item's layer comes from the l2 locator", flush=True)
    elif layer != "l2":
        model.arch.check_layer(layer)
    facts = None
    if args.facts:
        every = load_bundled_facts()
        facts = every[:: max(1, len(every) // args.facts)][: args.facts]
    edits: list[Any] = []

    def progress(i: int, row: dict[str, Any]) -> None:
        b, a = row["before"]["safe"]["DS"], row["after"]["safe"]["DS"]
        refusal = row["after"].get("over_refusal")
        extra = "" if refusal is None else f", over-refusal {row['before']['over_refusal']:.2f} -> {refusal:.2f}"
        print(f"[{i + 1}/{len(items)}] item {row['item_id']} ({row['category']}): layer {row['layer']}, "
              f"DS {_word(b)} -> {_word(a)}{extra}", flush=True)

    stage(f"DINM on {len(items)} item(s): each located, edited, judged before and after, and undone")
    per_item = "auto" if layer == "l2" else layer  # the library's "auto": each item's own l2 layer
    from knowscope.editing.dinm import DINMHyperParams

    hp = (DINMHyperParams.for_probe_layer if location is not None else DINMHyperParams.for_model)(model, **overrides)
    report = detox(model, items, judge=judge, layer=per_item, hparams=hp, facts=facts,
                   max_new_tokens=args.max_new_tokens,
                   on_item=progress, keep_edits=edits if args.save else None, benign=benign,
                   benign_tokens=args.benign_tokens)
    out = report.to_dict()
    out.update({"model": model.name, "fingerprint": model.fingerprint, "data": args.data or "bundled",
                "n_facts_checked": len(facts or []), "benign_source": args.benign or "bundled"})
    if location is not None:
        out["toxic_location"] = location.to_dict()
    if args.save:
        from knowscope.results import atomic_directory, write_group_marker

        with atomic_directory(args.save, "group:detox_run") as root:
            for i, res in enumerate(edits):
                res.save(root / "edits" / f"{i:04d}")
            write_json_atomic(root / "report.json", out)
            report.meta = {k: out[k] for k in ("model", "fingerprint", "data", "benign_source")}
            report.save(root / "report")  # the same report as a result the viewer's Runs page opens
            write_group_marker(root, "detox_run", {"n_items": len(items)})
        out["saved"] = str(args.save)
    print(f"\nDINM on {model.name}: {len(items)} items, judge {report.judge}, toxic layers {report.toxic_layers}")
    print(report.table())
    return out


def _word(score: float) -> str:
    """A response's safety score in words (0.5 = an empty response, as SafeEdit scores it)."""
    return "safe" if score >= 1 else ("empty" if score > 0 else "unsafe")
