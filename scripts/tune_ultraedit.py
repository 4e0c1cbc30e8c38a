"""Choose UltraEdit's layers and lr for the default model on the lifelong benchmark's tuning split.

The tuning split is every 4th fact of the extended set (``bench_lifelong.lifelong_facts``); the first
``--facts`` of them in the benchmark's edit order are edited one at a time, in sequence, with each setting
(``--grid``: ``first-last:lr`` items, e.g. ``3-7:1e-2``). After the sequence the edited facts are scored
(efficacy, paraphrase, neighbourhood; their harmonic mean is CounterFact's score, what the choice ranks
by) and EasyEdit locality on the never-edited probe. One JSON line per setting goes to ``--out``
(appended; settings already there are skipped), so a stopped sweep continues.

    python scripts/tune_ultraedit.py --facts 40 --grid 3-7:1e-3,3-7:1e-2,19-27:1e-2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_lifelong import lifelong_facts  # noqa: E402

from knowscope.editing.editors import get_editor  # noqa: E402
from knowscope.editing.evaluation import evaluate, pre_edit_predictions  # noqa: E402
from knowscope.editing.session import EditSession  # noqa: E402
from knowscope.models import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--facts", type=int, default=40)
    ap.add_argument("--probe", type=int, default=50)
    ap.add_argument("--grid", required=True)
    ap.add_argument("--out", default="runs/tune_ultraedit.jsonl")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    model = load_model(device="cpu")
    edits, probe, tuning = lifelong_facts(args.probe)
    facts = [f for f in edits if str(f.case_id) in tuning][: args.facts]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["setting"] for line in out.read_text().splitlines()} if out.exists() else set()
    ref = pre_edit_predictions(model, facts + probe, generation=False)
    editor = get_editor("ultraedit")
    for item in args.grid.split(","):
        if item in done:
            continue
        span, lr = item.split(":")
        first, last = (int(x) for x in span.split("-"))
        hp = editor.hparams.for_model(model, layers=tuple(range(first, last + 1)), lr=float(lr))
        session = EditSession(model)
        t0 = time.perf_counter()
        try:
            for fact in facts:
                session.apply(editor(model, [fact], hparams=hp))
            seconds = time.perf_counter() - t0
            mine = evaluate(model, facts, reference=ref, generation=False, fluency=False).flat()
            held = evaluate(model, probe, reference=ref, generation=False, fluency=False, edited=facts).flat()
        finally:
            session.rollback()
        parts = [mine.get("efficacy_score"), mine.get("paraphrase_score"), mine.get("neighborhood_score")]
        score = statistics.harmonic_mean(parts) if all(isinstance(p, float) and p > 0 for p in parts) else 0.0
        row = {"setting": item, "layers": [first, last], "lr": float(lr), "facts": len(facts), "score": score,
               "seconds_per_edit": seconds / len(facts), "edited": mine, "probe_locality": held.get("locality_acc"),
               "probe_neighborhood": held.get("neighborhood_score")}
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{item}: score {score:.3f} eff {parts[0]:.3f} para {parts[1]:.3f} neigh {parts[2]:.3f} "
              f"probe loc {held.get('locality_acc')} {seconds / len(facts):.2f}s/edit", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
