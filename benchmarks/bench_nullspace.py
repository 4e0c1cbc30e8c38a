"""Why does the null-space mode not protect the neighbours on the default model? (issue #19, step 1)

Each candidate cause is measured, not argued:

* ``convergence`` — the key statistics ``C`` from n self-generated tokens (n doubling from 4k): the
  relative change ‖C₂ₙ − Cₙ‖_F / ‖C₂ₙ‖_F per layer; for each null-space rule, how many of the d_mlp
  key directions it keeps, and how much of the *held-out* keys' energy falls in the kept subspace,
  tr(P C_h) / tr(C_h) (C_h from text sampled with another seed, never used for C). An update confined
  to that subspace can move held-out keys only through that share.
* ``batch`` — one MEMIT batch of ``--batch`` facts under every configuration (plain MEMIT at several
  ``mom2_weight``; the null-space mode with the relative / absolute threshold rule at several
  thresholds, ridge terms and statistics sizes). The z targets depend only on the unedited model, so
  they are optimised once and shared (``SequentialMEMIT.edit(targets=...)``): the configurations differ
  in the solve alone. Per configuration and layer: kept dimensions, the preserved-key residual on
  held-out keys √(tr(ΔW C_h ΔWᵀ) / tr(W C_h Wᵀ)) (RMS change of the layer's output on ordinary text,
  relative to the output); then the batch's efficacy, its own neighbourhood / EasyEdit locality on
  prompts about unedited subjects, and the same on a probe of facts that are never edited.
* ``sequential`` — the configurations named by ``--seq-configs``, ``--seq-batches`` batches one after
  another (batch 2 on is optimised on the edited model, per configuration): the same signals after
  every batch.

Facts: the bundled extended set spread over the relations; the first ``--seq-batches × --batch`` are
edited, the next ``--probe`` are the never-edited probe. Every configuration's result is written to
the JSON as soon as it finishes and a re-run skips what is there (the batch-1 targets are kept under
``runs/bench_nullspace/``), so the benchmark resumes.

    python benchmarks/bench_nullspace.py --only convergence
    python benchmarks/bench_nullspace.py --only batch
    python benchmarks/bench_nullspace.py --only sequential --seq-configs plain,ns-rel-1e-2,ns-abs-1e-2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from knowscope.editing import memit
from knowscope.editing.evaluation import evaluate, pre_edit_predictions
from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.keys import context_templates
from knowscope.editing.sequential import prefers_new
from knowscope.editing.session import EditSession
from knowscope.editing.stats import key_stats
from knowscope.facts import load_bundled_facts, write_json_atomic
from knowscope.knowledge import fact_accuracy
from knowscope.models import load_model
from knowscope.sweep.grid import spread

RESULTS = Path(__file__).parent / "results"
SCRATCH = Path(__file__).resolve().parents[1] / "runs" / "bench_nullspace"
HELD_OUT_SEED = 1  # the held-out keys' text: sampled with another seed than every C (seed 0)


def configurations(abs_thresholds: list[float], big: int) -> dict[str, tuple[bool, dict[str, Any]]]:
    """name -> (null_space, MEMIT hyperparameter overrides). ``plain`` / ``ns-rel-1e-2`` are today's defaults;
    ``-C<n>k`` names use key statistics from ``big`` tokens instead of the default count."""
    tag = f"C{big // 1000}k"
    out: dict[str, tuple[bool, dict[str, Any]]] = {
        "plain": (False, {}),
        "plain-mw2000": (False, {"mom2_weight": 2_000.0}),
        "plain-mw8000": (False, {"mom2_weight": 8_000.0}),
        "plain-mw32000": (False, {"mom2_weight": 32_000.0}),
        f"plain-{tag}-mw8000": (False, {"stats_tokens": big, "mom2_weight": 8_000.0}),
        f"plain-{tag}": (False, {"stats_tokens": big}),
        f"plain-{tag}-mw2000": (False, {"stats_tokens": big, "mom2_weight": 2_000.0}),
        "ns-rel-1e-2": (True, {}),
        f"ns-rel-1e-2-{tag}": (True, {"stats_tokens": big}),
        "ns-rel-1e-2-l2-0.1": (True, {"null_space_l2": 0.1}),
        "ns-rel-1e-2-l2-10": (True, {"null_space_l2": 10.0}),
        "ns-rel-1e-2-l2-100": (True, {"null_space_l2": 100.0}),
        f"ns-abs-0.01-{tag}-l2-10": (True, {"null_space_rule": "absolute", "null_space_threshold": 1e-2,
                                           "stats_tokens": big, "null_space_l2": 10.0}),
        f"ns-abs-0.01-{tag}-l2-100": (True, {"null_space_rule": "absolute", "null_space_threshold": 1e-2,
                                            "stats_tokens": big, "null_space_l2": 100.0}),
    }
    for t in abs_thresholds:
        out[f"ns-abs-{t:g}"] = (True, {"null_space_rule": "absolute", "null_space_threshold": t})
        out[f"ns-abs-{t:g}-{tag}"] = (True, {"null_space_rule": "absolute", "null_space_threshold": t,
                                             "stats_tokens": big})
    return out


def residual(dW: torch.Tensor, W: torch.Tensor, C_h: torch.Tensor) -> float:
    """√(tr(ΔW C_h ΔWᵀ) / tr(W C_h Wᵀ)): RMS output change on held-out keys relative to the output."""
    return float(torch.sqrt(torch.trace(dW @ C_h @ dW.T) / torch.trace(W @ C_h @ W.T)))


def kept(C: torch.Tensor, hp: MEMITHyperParams) -> torch.Tensor:
    return memit.null_space_projector(C, hp.null_space_threshold, hp.null_space_rule)


def bench_convergence(model: Any, layers: list[int], C_h: dict[int, torch.Tensor], max_tokens: int) -> dict[str, Any]:
    ns = []
    n = 4_000
    while n <= max_tokens:
        ns.append(n)
        n *= 2
    stats = {n: {k: v.mom2.double() for k, v in key_stats(model, layers, n_tokens=n).items()} for n in ns}
    rows = []
    for a, b in zip(ns, ns[1:], strict=False):
        rows.append({"from": a, "to": b, "rel_change": {str(L): float((stats[b][L] - stats[a][L]).norm()
                                                                      / stats[b][L].norm()) for L in layers}})
    rules = [("relative", t) for t in (1e-2, 1e-3)] + [("absolute", t) for t in (1e-2, 7e-3, 5e-3, 1e-3)]
    subspace = []
    for n in ns:
        for rule, t in rules:
            hp = MEMITHyperParams(null_space_rule=rule, null_space_threshold=t)
            per = {}
            for L in layers:
                P = kept(stats[n][L], hp)
                per[str(L)] = {"kept_dims": round(float(torch.trace(P))),
                               "held_out_energy_in_kept": float(torch.trace(P @ C_h[L]) / torch.trace(C_h[L]))}
            subspace.append({"tokens": n, "rule": rule, "threshold": t, "layers": per})
    spectra = {str(L): {"max": float(torch.linalg.eigvalsh(stats[ns[-1]][L]).max()),
                        "quantiles": [float(q) for q in torch.quantile(torch.linalg.eigvalsh(stats[ns[-1]][L]),
                                                                        torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9],
                                                                                     dtype=torch.float64))]}
               for L in layers}
    return {"tokens": ns, "convergence": rows, "subspace": subspace, "spectrum_at_max_tokens": spectra}


def measure(model: Any, layers: list[int], C_h: dict[int, torch.Tensor], originals: dict[int, torch.Tensor],
            edited: list[Any], batch: list[Any], first: list[Any], probe: list[Any], ref_batch: Any,
            ref_probe: Any) -> dict[str, Any]:
    """The signals of the model as it is now (after the edits of ``edited``)."""
    total = {L: model.mlp_out_matrix(L).detach().double() - originals[L] for L in layers}  # accumulated ΔW
    own = evaluate(model, batch, reference=ref_batch, fluency=False, generation=False, edited=edited)
    prb = evaluate(model, probe, reference=ref_probe, fluency=False, generation=False, edited=edited)
    wins = prefers_new(model, edited)
    return {
        "edits": len(edited),
        "held_out_residual": {str(L): residual(total[L], originals[L], C_h[L]) for L in layers},
        "update_norm": {str(L): float(total[L].norm() / originals[L].norm()) for L in layers},
        "efficacy_all": sum(wins) / len(wins), "retention_first": sum(wins[: len(first)]) / len(first),
        "batch_neighborhood": own.neighborhood_score, "batch_locality": own.locality_acc,
        "batch_specificity_prompts": own.notes.get("specificity_prompts"),
        "probe_neighborhood": prb.neighborhood_score, "probe_locality": prb.locality_acc,
        "probe_accuracy": fact_accuracy(model, probe).accuracy,
    }


def run_config(model: Any, name: str, null_space: bool, overrides: dict[str, Any], base: MEMITHyperParams,
               batches: list[list[Any]], probe: list[Any], C_h: dict[int, torch.Tensor], targets1: Any,
               refs: list[Any], ref_probe: Any, n_batches: int) -> dict[str, Any]:
    hp = replace(base, **overrides)
    layers = list(hp.layers)
    session = EditSession(model)
    seq = memit.SequentialMEMIT(model, hparams=hp, null_space=null_space)
    originals = {L: model.mlp_out_matrix(L).detach().double().clone() for L in layers}
    records = []
    try:
        for b in range(n_batches):
            t0 = time.perf_counter()
            session.apply(seq.edit(batches[b], targets=targets1 if b == 0 else None))
            edited = [f for bb in batches[: b + 1] for f in bb]
            rec = measure(model, layers, C_h, originals, edited, batches[b], batches[0], probe, refs[b], ref_probe)
            rec["seconds"] = time.perf_counter() - t0
            if null_space:
                rec["kept_dims"] = {str(L): round(float(torch.trace(seq.P[L]))) for L in layers}
            records.append(rec)
            logging.getLogger("bench").warning("%s after %d edits: %s", name, len(edited),
                                               {k: v for k, v in rec.items() if not isinstance(v, dict)})
    finally:
        session.rollback()
    return {"null_space": null_space, "overrides": overrides, "hparams": hp.to_dict(), "records": records}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="convergence,batch,sequential")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--probe", type=int, default=50)
    ap.add_argument("--seq-batches", type=int, default=2)
    ap.add_argument("--configs", default=None, help="batch section: comma-separated names (default: all)")
    ap.add_argument("--seq-configs", default="plain,ns-rel-1e-2")
    ap.add_argument("--abs-thresholds", default="1e-2,5e-3")
    ap.add_argument("--max-stats-tokens", type=int, default=64_000)
    ap.add_argument("--held-out-tokens", type=int, default=16_000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--layers", default=None, help="MEMIT layers, comma-separated (default: the model's)")
    ap.add_argument("--model", default=None, help="default: the default model (a tiny one smoke-tests the script)")
    ap.add_argument("--out", default=str(RESULTS / "bench_nullspace.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    report: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    model = load_model(args.model, device="cpu") if args.model else load_model(device="cpu")
    base = MEMITHyperParams.for_model(model)
    if args.layers:
        base = replace(base, layers=tuple(int(x) for x in args.layers.split(",")))
    layers = list(base.layers)
    abs_thresholds = [float(x) for x in args.abs_thresholds.split(",") if x]
    configs = configurations(abs_thresholds, args.max_stats_tokens)
    facts = spread(load_bundled_facts(name="extended"), args.seq_batches * args.batch + args.probe)
    batches = [facts[i * args.batch:(i + 1) * args.batch] for i in range(args.seq_batches)]
    probe = facts[args.seq_batches * args.batch:]
    report.update({"model": model.name, "fingerprint": model.fingerprint, "argv": sys.argv[1:], "layers": layers,
                   "batch_size": args.batch, "n_probe": len(probe), "torch_threads": torch.get_num_threads(),
                   "held_out": {"seed": HELD_OUT_SEED, "tokens": args.held_out_tokens}})
    C_h = {L: s.mom2.double() for L, s in key_stats(model, layers, n_tokens=args.held_out_tokens,
                                                    seed=HELD_OUT_SEED).items()}

    def save() -> None:
        write_json_atomic(out_path, report)

    sections = args.only.split(",")
    if "convergence" in sections and "convergence" not in report:
        report["convergence"] = bench_convergence(model, layers, C_h, args.max_stats_tokens)
        save()
    if "batch" in sections or "sequential" in sections:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        zfile = SCRATCH / f"targets-{model.fingerprint}-{args.batch}-{hash_facts(batches[0])}.pt"
        if zfile.exists():
            targets1 = torch.load(zfile)
        else:
            templates = context_templates(model, base.context_lengths, base.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(base.seed)
                targets1 = memit.compute_zs(model, batches[0], layers[-1], templates, base)
            torch.save(targets1, zfile)
        refs = [pre_edit_predictions(model, b, generation=False) for b in batches]
        ref_probe = pre_edit_predictions(model, probe, generation=False)
        for section, names, n_batches in (
                ("batch", args.configs.split(",") if args.configs else list(configs), 1),
                ("sequential", args.seq_configs.split(","), args.seq_batches)):
            if section not in sections:
                continue
            done = report.setdefault(section, {})
            for name in names:
                if name not in configs:
                    raise SystemExit(f"unknown configuration {name!r}; known: {', '.join(configs)}")
                if name in done:
                    continue
                ns, overrides = configs[name]
                done[name] = run_config(model, name, ns, overrides, base, batches, probe, C_h, targets1, refs,
                                        ref_probe, n_batches)
                save()
    print_report(report)
    save()
    print(f"wrote {out_path}")
    return 0


def hash_facts(facts: list[Any]) -> str:
    import hashlib

    ids = [str(f.case_id) for f in facts]
    return hashlib.blake2b(",".join(ids).encode(), digest_size=6).hexdigest()


def print_report(report: dict[str, Any]) -> None:
    conv = report.get("convergence")
    if conv:
        print("\nC convergence: relative change per layer")
        for r in conv["convergence"]:
            print(f"  {r['from']:>6} -> {r['to']:>6}: "
                  + "  ".join(f"L{k} {v:.3f}" for k, v in r["rel_change"].items()))
        print("kept dimensions / held-out key energy in the kept subspace")
        for r in conv["subspace"]:
            print(f"  {r['tokens']:>6} {r['rule']:>8} {r['threshold']:<8g} " + "  ".join(
                f"L{k} {v['kept_dims']:>4}/{v['held_out_energy_in_kept']:.4f}" for k, v in r["layers"].items()))
    for section in ("batch", "sequential"):
        rows = report.get(section) or {}
        if not rows:
            continue
        print(f"\n{section}: efficacy, retention, batch neighbourhood / locality, probe neighbourhood / locality, "
              "max held-out residual, max update norm")
        for name, r in rows.items():
            for rec in r["records"]:
                print(f"  {name:>22} {rec['edits']:>4} {rec['efficacy_all']:.3f} {rec['retention_first']:.3f} "
                      f"{_f(rec['batch_neighborhood'])} {_f(rec['batch_locality'])} {_f(rec['probe_neighborhood'])} "
                      f"{_f(rec['probe_locality'])} {max(rec['held_out_residual'].values()):.4f} "
                      f"{max(rec['update_norm'].values()):.4f}")


def _f(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
