"""The per-layer DINM sweep of ``bench_detox.py --sweep``: DS and over-refusal when every item is edited at one layer.

For each layer of the sweep and each item, DINM edits the item at that layer, the adversarial prompt
is answered (DS) and the benign set is answered (over-refusal), and the edit is undone. The unedited
model's DS and over-refusal come first. Every (layer, item) cell is saved as it finishes, so a
stopped run continues where it stopped (the partial file is keyed by the settings).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from knowscope.chat import respond
from knowscope.editing import dinm
from knowscope.editing.session import EditSession
from knowscope.facts import write_json_atomic
from knowscope.models import Model
from knowscope.safeedit import SafetyItem
from knowscope.safety.judge import RefusalJudge
from knowscope.safety.metrics import EMPTY_RESPONSE_SCORE
from knowscope.safety.refusal import BenignPrompt, over_refusal


def _ds(model: Model, items: Sequence[SafetyItem], max_new_tokens: int) -> list[float]:
    """Per item, the safety score of the greedy answer to its adversarial prompt (SafeEdit's DS)."""
    resp = respond(model, [it.adversarial_prompt for it in items], max_new_tokens=max_new_tokens)
    verdicts = RefusalJudge().judge(resp, [it.adversarial_prompt for it in items])
    return [EMPTY_RESPONSE_SCORE if not r.strip() else float(v) for r, v in zip(resp, verdicts, strict=True)]


def sweep(model: Model, items: Sequence[SafetyItem], layers: Sequence[int], benign: Sequence[BenignPrompt],
          hp: dinm.DINMHyperParams, partial_dir: Path, *, max_new_tokens: int = 48, benign_tokens: int = 24,
          budget_s: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; returns its state (``before`` and ``cells``). Stops after ``budget_s``.

    Layers run in the order given (the most telling first, so a stopped run has them); a re-run with
    more layers keeps the cells already done.
    """
    settings = {"fingerprint": model.fingerprint, "items": [it.id for it in items], "hparams": hp.to_dict(),
                "benign": [b.prompt for b in benign], "max_new_tokens": max_new_tokens,
                "benign_tokens": benign_tokens}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]  # layers may grow
    settings["layers"] = list(layers)
    partial = partial_dir / f"sweep_{key}.json"
    state: dict[str, Any] = {"settings": settings, "before": None, "cells": {}, "seconds": 0.0, **(extra or {})}
    if partial.exists():
        state = json.loads(partial.read_text())
        state["settings"]["layers"] = list(layers)
        state.pop("complete", None)
        print(f"resuming {partial}: {len(state['cells'])}/{len(layers) * len(items)} cells done", flush=True)
    t_start = time.perf_counter()
    if state["before"] is None:
        t0 = time.perf_counter()
        ref = over_refusal(model, benign, benign_tokens, batch_size=40)
        state["before"] = {"DS": _ds(model, items, max_new_tokens), "over_refusal": ref["rate"],
                           "by_category": ref["by_category"], "refused": ref["refused"]}
        state["seconds"] += time.perf_counter() - t0
        write_json_atomic(partial, state)
    session = EditSession(model)
    for layer in layers:
        for i, it in enumerate(items):
            cell = f"{layer}:{it.id}"
            if cell in state["cells"]:
                continue
            if budget_s is not None and time.perf_counter() - t_start > budget_s:
                print(f"budget of {budget_s:.0f} s spent; run again to continue", flush=True)
                return state
            t0 = time.perf_counter()
            torch.manual_seed(i)
            res = dinm.edit(model, it, layer=layer, hparams=hp)
            with session.temporary(res):
                ds = _ds(model, [it], max_new_tokens)[0]
                ref = over_refusal(model, benign, benign_tokens, batch_size=40)
            state["cells"][cell] = {"layer": layer, "item_id": it.id, "DS": ds, "over_refusal": ref["rate"],
                                    "by_category": ref["by_category"],
                                    "refused": [r["prompt"] for r in ref["refused"]]}
            state["seconds"] += time.perf_counter() - t0
            write_json_atomic(partial, state)
            print(f"  layer {layer:>2} item {it.id}: DS {ds:.1f}, over-refusal {ref['rate']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    state["complete"] = True
    write_json_atomic(partial, state)
    return state


def table(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Per layer: mean DS and mean over-refusal over the items done, and the rise over the unedited model."""
    before = state["before"]
    rows = [{"layer": "unedited", "n_items": len(before["DS"]), "DS": sum(before["DS"]) / len(before["DS"]),
             "over_refusal": before["over_refusal"], "over_refusal_rise": 0.0}]
    for layer in sorted(state["settings"]["layers"]):
        cells = [c for c in state["cells"].values() if c["layer"] == layer]
        if not cells:
            continue
        ref = sum(c["over_refusal"] for c in cells) / len(cells)
        rows.append({"layer": layer, "n_items": len(cells), "DS": sum(c["DS"] for c in cells) / len(cells),
                     "over_refusal": ref, "over_refusal_rise": ref - before["over_refusal"]})
    return rows


#: what two sweep reports must share to be read as one (everything but the layers)
SAME = ("model", "fingerprint", "items", "hparams", "max_new_tokens", "benign_tokens", "n_benign", "before")


def merge(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several ``bench_detox.py --sweep`` reports of the same settings over different layers as one report
    (cells of a layer measured twice: the first report's); refuses reports whose settings differ."""
    first = reports[0]
    for other in reports[1:]:
        diff = [k for k in SAME if other.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"the sweep reports differ in {diff}: they are not one sweep")
    cells: dict[str, Any] = {}
    for r in reports:
        for key, cell in r["cells"].items():
            cells.setdefault(key, cell)
    layers = sorted({c["layer"] for c in cells.values()})
    out = {**{k: first[k] for k in SAME}, "locator": first.get("locator"), "cells": cells,
           "complete": all(r.get("complete") for r in reports), "merged_from": [r.get("argv") for r in reports],
           "sweep_seconds": sum(r.get("sweep_seconds", 0.0) for r in reports)}
    out["table"] = table({"before": first["before"], "cells": cells, "settings": {"layers": layers}})
    return out


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'layer':>9} {'items':>5} {'DS':>6} {'over-refusal':>12} {'rise':>7}")
    for r in rows:
        print(f"{r['layer']!s:>9} {r['n_items']:>5} {r['DS']:>6.3f} {r['over_refusal']:>12.3f} "
              f"{r['over_refusal_rise']:>+7.3f}")
