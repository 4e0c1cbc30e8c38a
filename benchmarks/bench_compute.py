"""Where an edit's time goes, against the machine's compute bound (#17, step 1: the measurement).

For a few bundled facts, one ROME edit is split into its phases and each phase is timed and its
floating-point operations counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products, attention and convolutions, forward and backward — the operations that bound a
transformer's compute; elementwise work is not counted, so the share below is an upper bound on
how close a phase runs to the matmul roof):

* ``templates`` — the context templates (short generations, cached after the first edit);
* ``keys`` — the MLP keys at the subject's last token over the templates (``template_keys``);
* ``v*`` — the optimisation of the vector added at the edited layer (``optimize_delta``);
* ``solve`` — the rank-one closed form (``rank_one_update``);
* ``evaluate`` — CounterFact + EasyEdit metrics of the edited fact, without fluency.

The compute bound is measured in the same run: the sustained float32 matmul throughput on shapes
of this model (tokens × d_model @ d_model × d_mlp, the unembedding, and a square 2048 product),
best of several repeats, with the same thread count. Each phase reports seconds, GFLOP, GFLOP/s
and its share of the bound. Then, side by side in the same run: ROME edits and a MEMIT batch with each
v*/z forward pass (``paths``), and ``evaluate()`` of a batch of facts with each scoring mode
(``evaluate``). Three sections run only when asked: ``memit_flops`` (the FLOPs of the MEMIT batch timed
in ``paths``, counted on its first 10 facts per path and scaled), ``z_batch`` (a MEMIT batch's z
one fact at a time vs 10 per batched forward) and ``path_choice`` (every v*/z path on tiny GPT-2, tiny
Llama and the default model in one run: which is the fastest correct one per architecture; it decided
which paths the editors keep, docs/benchmarks.md). Prints tables and writes
``benchmarks/results/bench_compute.json``; sections not run keep their numbers, and ``roofs`` keeps
the roof measured in the run that measured each section (the top-level ``roof`` is the latest run's).

    python benchmarks/bench_compute.py [--facts 3] [--only phases,paths,evaluate] [--eval-facts 100]
    python benchmarks/bench_compute.py --only paths,memit_flops --memit-facts 100 --memit-paths plain
    python benchmarks/bench_compute.py --only path_choice --facts 2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from knowscope.editing import memit, rome
from knowscope.editing.evaluation import evaluate
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.keys import context_templates, template_keys
from knowscope.editing.optimize import optimize_delta, optimize_deltas
from knowscope.editing.rome import rank_one_update
from knowscope.editing.scoring import generate_texts, generation_prompts, ngram_entropy
from knowscope.editing.session import EditResult, EditSession
from knowscope.editing.stats import key_stats, layer_stats
from knowscope.editing.vpaths import v_path
from knowscope.facts import load_bundled_facts, write_json_atomic
from knowscope.models import load_model, tiny_model

RESULTS = Path(__file__).parent / "results"


def matmul_roof(shapes: list[tuple[int, int, int]], seconds: float = 2.0) -> dict[str, Any]:
    """Sustained float32 GFLOP/s per ``(m, k, n)`` product shape: best of repeated timed bursts."""
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        reps = max(1, int(2e9 / (2 * m * k * n)))
        best = 0.0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
        out[f"{m}x{k}x{n}"] = best
    return {"by_shape": out, "gflops": max(out.values())}


def memory_bandwidth(mib: int = 256, seconds: float = 2.0) -> float:
    """Sustained copy bandwidth in GB/s (bytes read + written), best of repeated copies of ``mib`` MiB."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


class MatmulBytes(TorchDispatchMode):
    """Counts the bytes of every matrix product's operands and result (``mm``, ``addmm``, ``bmm``).

    With operands that do not stay in cache between products (a block's weights are 14 MB here),
    this is the memory traffic the products cannot avoid; divided by the measured bandwidth it is a
    second floor under a phase's time beside FLOPs / matmul roof (a roofline's memory side).
    """

    OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in self.OPS:
            self.bytes += sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
            self.bytes += out.numel() * out.element_size()
        return out


class Phase:
    """Time or count the FLOPs of a block: ``with phase("keys"): ...``; totals per phase name.

    Counting (``count=True``) runs under ``FlopCounterMode``, which roughly doubles the time, so a
    phase is timed in a separate run without it (``count=False``).
    """

    def __init__(self, count: bool) -> None:
        self.count = count
        self.rows: dict[str, dict[str, float]] = {}
        self.steps: list[int] = []  # v* optimisation steps per fact (early stopping varies them)

    def __call__(self, name: str) -> Any:
        phase = self

        class _Block:
            def __enter__(self) -> None:
                self.counter = FlopCounterMode(display=False) if phase.count else None
                self.traffic = MatmulBytes() if phase.count else None
                if self.counter is not None:
                    self.counter.__enter__()
                    self.traffic.__enter__()
                self.t = time.perf_counter()

            def __exit__(self, *exc: Any) -> None:
                secs = time.perf_counter() - self.t
                row = phase.rows.setdefault(name, {"seconds": 0.0, "flops": 0.0, "bytes": 0.0, "calls": 0})
                if self.counter is not None:
                    self.traffic.__exit__(*exc)
                    self.counter.__exit__(*exc)
                    row["flops"] += float(self.counter.get_total_flops())
                    row["bytes"] += float(self.traffic.bytes)
                row["seconds"] += secs
                row["calls"] += 1

        return _Block()


def bench_rome_phases(model: Any, facts: list[Any], hp: ROMEHyperParams, count: bool) -> Phase:
    phase = Phase(count)
    layer = hp.layer
    C = layer_stats(model, layer, n_tokens=hp.stats_tokens, source=hp.stats_source).mom2.float()
    for fact in facts:
        with phase("templates"):
            templates = context_templates(model, hp.context_lengths, hp.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            with phase("keys"):
                k = template_keys(model, layer, [fact], templates)[0].mean(0)
            with phase("v*"):
                d = optimize_delta(model, model.arch.hook_mlp_out(layer), fact, templates, hp)
            phase.steps.append(len(d.losses))
        with phase("solve"):
            W = model.mlp_out_matrix(layer).detach().float()
            dW = rank_one_update(W, C, k, W @ k + d.delta)
        name = model.arch.mlp_out_name(layer)
        result = EditResult(method="rome", deltas={name: model.to_param_layout(layer, dW.to(model.dtype)).cpu()},
                            fingerprint=model.fingerprint, layers=[layer])
        session = EditSession(model)
        session.apply(result)
        try:
            with phase("evaluate"):
                evaluate(model, [fact], session=session, fluency=False)
        finally:
            session.rollback()
    return phase


def phases_report(model: Any, facts: list[Any], hp: ROMEHyperParams, bound: float,
                  bandwidth: float | None = None) -> dict[str, Any]:
    """Seconds, GFLOP and matmul traffic per phase; share of the compute roof and, with the measured
    ``bandwidth`` (GB/s), the memory floor: matmul operand bytes / bandwidth."""
    bench_rome_phases(model, facts[:1], hp, count=False)  # warm-up: caches, templates, allocator
    phase = bench_rome_phases(model, facts, hp, count=False)  # seconds
    counted = bench_rome_phases(model, facts, hp, count=True)  # FLOPs and matmul bytes
    for name, row in phase.rows.items():
        row["flops"] = counted.rows[name]["flops"]
        row["bytes"] = counted.rows[name]["bytes"]
    rows = []
    print(f"\nROME phases, mean over {len(facts)} facts (layer {hp.layer}; v* steps {phase.steps} of at most "
          f"{hp.v_steps})")
    print(f"{'phase':<10} {'s/edit':>8} {'GFLOP/edit':>11} {'GFLOP/s':>8} {'of roof':>8} {'GB mm':>7} "
          f"{'mem floor s':>12}")
    for name, r in phase.rows.items():
        secs, gflop, gbyte = r["seconds"] / len(facts), r["flops"] / len(facts) / 1e9, r["bytes"] / len(facts) / 1e9
        rate = gflop / secs if secs else 0.0
        floor = gbyte / bandwidth if bandwidth else None
        rows.append({"phase": name, "seconds_per_edit": secs, "gflop_per_edit": gflop, "gflops": rate,
                     "share_of_roof": rate / bound, "matmul_gbytes_per_edit": gbyte, "memory_floor_s": floor})
        print(f"{name:<10} {secs:>8.2f} {gflop:>11.1f} {rate:>8.1f} {100 * rate / bound:>7.1f}% {gbyte:>7.1f} "
              f"{floor if floor is not None else float('nan'):>12.2f}")
    edit = [r for r in rows if r["phase"] != "evaluate"]
    total_s = sum(r["seconds_per_edit"] for r in edit)
    total_g = sum(r["gflop_per_edit"] for r in edit)
    total_b = sum(r["matmul_gbytes_per_edit"] for r in edit)
    mem_floor = total_b / bandwidth if bandwidth else None
    print(f"edit (templates + keys + v* + solve): {total_s:.2f} s, {total_g:.1f} GFLOP, "
          f"{100 * total_g / total_s / bound:.1f}% of the roof; at the roof it would take {total_g / bound:.2f} s"
          + (f"; moving its matmul operands once at {bandwidth:.0f} GB/s takes {mem_floor:.2f} s" if mem_floor else ""))
    return {"rome_phases": rows, "edit_seconds": total_s, "edit_gflop": total_g,
            "edit_share_of_roof": total_g / total_s / bound, "edit_matmul_gbytes": total_b,
            "edit_memory_floor_s": mem_floor, "v_steps": phase.steps}


# the v*/z forward passes, slowest first (knowscope.editing.vpaths.VPath); "fast" and "suffix" were removed
# after the path_choice section showed them slower than packed on every architecture (docs/benchmarks.md)
PATHS = ("bridge", "packed", "plain")


def bench_paths(model: Any, facts: list[Any], hp: ROMEHyperParams, memit_facts: list[Any],
                memit_hp: MEMITHyperParams, memit_paths: tuple[str, ...] = PATHS) -> dict[str, Any]:
    """ROME edits and one MEMIT batch with each v*/z forward pass, alternating in one run, same seeds.

    The bridge's full forward pass with one fact at a time (``z_batch`` 1) is the path the editors had
    when issue #17 was filed; its ratio to each other path is the speed-up.
    """
    stats = layer_stats(model, hp.layer, n_tokens=hp.stats_tokens, source=hp.stats_source)
    mstats = key_stats(model, list(memit_hp.layers), n_tokens=memit_hp.stats_tokens, source=memit_hp.stats_source,
                       progress=False)
    rows = []
    for fact in facts:
        got = {}
        for path in PATHS:
            with v_path(path):
                torch.manual_seed(0)
                t = time.perf_counter()
                res = rome.edit(model, [fact], hparams=hp, stats=stats)
                got[path] = (time.perf_counter() - t, res)
        slow = got["bridge"][1]
        row: dict[str, Any] = {"subject": fact.subject}
        for path, (sec, res) in got.items():
            row[f"{path}_s"] = sec
            row[f"{path}_rel_diff"] = max(float((res.deltas[n] - slow.deltas[n]).norm() / slow.deltas[n].norm())
                                          for n in slow.deltas)
        rows.append(row)
        print(f"  ROME {fact.subject!r}: " + ", ".join(
            f"{p} {row[f'{p}_s']:.1f}s ({row['bridge_s'] / row[f'{p}_s']:.2f}x, delta rel diff "
            f"{row[f'{p}_rel_diff']:.1e})" for p in PATHS), flush=True)
    out: dict[str, Any] = {"rome": rows}
    for p in PATHS:
        out[f"rome_ratio_{p}"] = sum(r["bridge_s"] for r in rows) / sum(r[f"{p}_s"] for r in rows)
    out["rome_ratio"] = out[f"rome_ratio_{PATHS[-1]}"]
    if memit_facts:
        got = {}
        variants = [("bridge", 1)] + [(p, memit_hp.z_batch) for p in memit_paths if p != "bridge"]
        for path, z_batch in variants:
            with v_path(path):
                torch.manual_seed(0)
                t = time.perf_counter()
                res = memit.edit(model, memit_facts, hparams=dataclasses.replace(memit_hp, z_batch=z_batch),
                                 stats=mstats)
                got[(path, z_batch)] = (time.perf_counter() - t, res)
        ts, slow = got[("bridge", 1)]
        out["memit"] = {"n_facts": len(memit_facts), "bridge_s": ts, "variants": []}
        for (path, z_batch), (tf, fast) in got.items():
            diff = max(float((fast.deltas[n] - slow.deltas[n]).norm() / slow.deltas[n].norm()) for n in slow.deltas)
            out["memit"]["variants"].append({"path": path, "z_batch": z_batch, "seconds": tf, "ratio": ts / tf,
                                             "rel_diff": diff})
            print(f"  MEMIT batch of {len(memit_facts)}, {path} path, z_batch {z_batch}: {tf:.0f}s "
                  f"({ts / tf:.2f}x the bridge path), delta rel diff {diff:.1e}", flush=True)
    print(f"ROME over {len(rows)} edits: " + ", ".join(f"{p} {out[f'rome_ratio_{p}']:.2f}x" for p in PATHS))
    return out


def bench_memit_flops(model: Any, facts: list[Any], memit_hp: MEMITHyperParams, bound: float,
                      report: dict[str, Any], n_count: int = 10) -> dict[str, Any]:
    """FLOPs of the MEMIT batch timed in ``paths``: counted on its first ``n_count`` facts with each timed
    path (counting slows a run ~2×, so the batch is not re-run whole), scaled to the batch; the share of
    the roof is the scaled count over the batch's measured seconds, against ``bound``, the roof measured in
    the run that timed it."""
    batch = report.get("paths", {}).get("memit")
    if not batch or batch.get("n_facts") != len(facts):
        raise SystemExit("memit_flops needs the MEMIT batch of this size timed first (--only paths)")
    mstats = key_stats(model, list(memit_hp.layers), n_tokens=memit_hp.stats_tokens, source=memit_hp.stats_source,
                       progress=False)
    sub = facts[:n_count]
    for row in batch["variants"]:
        hp = dataclasses.replace(memit_hp, z_batch=min(row["z_batch"], len(sub)))
        with v_path(row["path"]):  # warm-up outside the count: the path's once-per-model check, caches
            memit.edit(model, facts[-2:], hparams=hp, stats=mstats)
        with v_path(row["path"]), FlopCounterMode(display=False) as counter:
            torch.manual_seed(0)
            memit.edit(model, sub, hparams=hp, stats=mstats)
        gflop = counter.get_total_flops() / 1e9 * len(facts) / len(sub)
        row.update({"gflop_estimated": gflop, "gflop_counted_on": len(sub), "gflops": gflop / row["seconds"],
                    "share_of_roof": gflop / row["seconds"] / bound})
        print(f"  MEMIT batch of {len(facts)}, {row['path']} path: ~{gflop:,.0f} GFLOP (counted on {len(sub)} facts),"
              f" {gflop / row['seconds']:.0f} GFLOP/s, {100 * row['share_of_roof']:.0f}% of the roof", flush=True)
    return batch


def bench_z_batch(model: Any, facts: list[Any], memit_hp: MEMITHyperParams,
                  z_batches: tuple[int, ...] = (1, 10)) -> dict[str, Any]:
    """One MEMIT batch on the default v*/z path with its facts' z optimised ``z_batch`` at a time (one batched
    forward per group, each fact its own vector and trajectory), alternating in one run."""
    mstats = key_stats(model, list(memit_hp.layers), n_tokens=memit_hp.stats_tokens, source=memit_hp.stats_source,
                       progress=False)
    rows, first = [], None
    memit.edit(model, facts[-2:], hparams=memit_hp, stats=mstats)  # warm-up: the path's check, caches
    path = model.compat.edit_modes.get("hook_resid_post")
    for z in z_batches:
        torch.manual_seed(0)
        t = time.perf_counter()
        res = memit.edit(model, facts, hparams=dataclasses.replace(memit_hp, z_batch=z), stats=mstats)
        secs = time.perf_counter() - t
        first = first or (secs, res)
        diff = max(float((res.deltas[n] - first[1].deltas[n]).norm() / first[1].deltas[n].norm()) for n in res.deltas)
        rows.append({"z_batch": z, "seconds": secs, "ratio": first[0] / secs, "rel_diff": diff})
        print(f"  MEMIT batch of {len(facts)}, {path} path, z_batch {z}: {secs:.0f}s "
              f"({first[0] / secs:.2f}x z_batch {z_batches[0]}), delta rel diff {diff:.1e}", flush=True)
    return {"n_facts": len(facts), "path": path, "rows": rows}


def bench_path_choice(models: dict[str, Any], all_facts: list[Any], n_rome: int = 2, n_memit: int = 2,
                      paths: tuple[str, ...] = PATHS) -> dict[str, Any]:
    """Which v*/z forward pass is fastest, per architecture, in one run: ROME's v* (at ``hook_mlp_out``, one
    fact at a time) and a MEMIT z batch (at ``hook_resid_post``, ``n_memit`` facts in one batched forward)
    with each path in turn, the same seeds. Each path is warmed up first (its once-per-model check against
    the bridge and the caches are not timed). ``used`` is the path that actually ran (a path that cannot run
    on a model, such as plain on GPT-2, falls back to the next one); ``rel_diff`` is the largest relative
    difference of its deltas from the bridge's."""
    out: dict[str, Any] = {}
    for label, model in models.items():
        rome_hp = ROMEHyperParams.for_model(model)
        memit_hp = MEMITHyperParams.for_model(model)
        templates = context_templates(model, rome_hp.context_lengths, rome_hp.seed)
        rome_hook = model.arch.hook_mlp_out(rome_hp.layer)
        memit_hook = model.arch.hook_resid_post(max(memit_hp.layers))
        facts = every(all_facts, n_rome + n_memit + 1)
        warm, rome_facts, memit_facts = facts[0], facts[1:1 + n_rome], facts[1 + n_rome:]
        rows: dict[str, dict[str, Any]] = {}
        for path in paths:
            with v_path(path):
                for hook in (rome_hook, memit_hook):  # the check and caches, outside the timing
                    optimize_deltas(model, hook, [warm, memit_facts[0]], templates, rome_hp.with_(v_steps=1))
                torch.manual_seed(0)
                t = time.perf_counter()
                rome_d = [optimize_delta(model, rome_hook, f, templates, rome_hp).delta for f in rome_facts]
                t_rome = time.perf_counter() - t
                torch.manual_seed(0)
                t = time.perf_counter()
                memit_d = [d.delta for d in optimize_deltas(model, memit_hook, memit_facts, templates, memit_hp)]
                t_memit = time.perf_counter() - t
            used = {"rome": model.compat.edit_modes.get("hook_mlp_out"),
                    "memit": model.compat.edit_modes.get("hook_resid_post")}
            if path == "bridge":
                used = {"rome": "bridge", "memit": "bridge"}
            rows[path] = {"rome_s": t_rome, "memit_s": t_memit, "used": used, "deltas": rome_d + memit_d}
        ref = rows["bridge"]["deltas"]
        for row in rows.values():
            row["rel_diff"] = max(float((a - b).norm() / b.norm()) for a, b in zip(row.pop("deltas"), ref, strict=True))
            row["rome_ratio"] = rows["bridge"]["rome_s"] / row["rome_s"]
            row["memit_ratio"] = rows["bridge"]["memit_s"] / row["memit_s"]
        print(f"\nv*/z paths on {label} ({model.arch.family}, {model.arch.n_layers} layers): ROME v* of {n_rome} "
              f"facts, MEMIT z of {n_memit} facts batched")
        for path, row in rows.items():
            print(f"  {path:<7} ROME {row['rome_s']:7.2f} s ({row['rome_ratio']:.2f}x)  "
                  f"MEMIT z {row['memit_s']:7.2f} s ({row['memit_ratio']:.2f}x)  "
                  f"ran as {row['used']}  rel diff {row['rel_diff']:.1e}", flush=True)
        out[label] = {"family": model.arch.family, "n_layers": model.arch.n_layers, "rome_layer": rome_hp.layer,
                      "memit_layer": max(memit_hp.layers), "n_rome": n_rome, "n_memit": n_memit, "paths": rows}
    return out


SCORE_MODES = ("rows", "packed")  # teacher-forced scoring, the old way first (knowscope.editing.scoring)


def bench_evaluate(model: Any, facts: list[Any], bound: float, repeats: int = 2) -> dict[str, Any]:
    """``evaluate()`` of a batch of facts without fluency (its scores and the unedited model's
    locality reference), with each scoring mode, alternating in one run; FLOPs counted once each.

    ``rows`` (one padded row per distinct input, logits at every position) is the path when issue
    #17 was filed; ``packed`` (each prompt once with its continuations behind it, logits only where
    read) is the default since. The metrics must agree (float rounding aside)."""
    saved = model.compat.score_mode
    out: dict[str, Any] = {"n_facts": len(facts), "modes": []}
    metrics = {}
    try:
        times: dict[str, list[float]] = {m: [] for m in SCORE_MODES}
        for _ in range(repeats):
            for mode in SCORE_MODES:
                model.compat.score_mode = mode
                t = time.perf_counter()
                metrics[mode] = evaluate(model, facts, session=EditSession(model), fluency=False).flat()
                times[mode].append(time.perf_counter() - t)
        for mode in SCORE_MODES:
            model.compat.score_mode = mode
            with FlopCounterMode(display=False) as counter:
                evaluate(model, facts, session=EditSession(model), fluency=False)
            secs = min(times[mode])
            gflop = counter.get_total_flops() / 1e9
            out["modes"].append({"mode": mode, "seconds": secs, "gflop": gflop, "gflops": gflop / secs,
                                 "share_of_roof": gflop / secs / bound})
    finally:
        model.compat.score_mode = saved
    base = out["modes"][0]["seconds"]
    for row in out["modes"]:
        row["ratio"] = base / row["seconds"]
    a, b = metrics["rows"], metrics["packed"]
    diffs = {k: abs(a[k] - b[k]) for k in a if isinstance(a[k], float) and isinstance(b.get(k), float)}
    out["metrics_max_abs_diff"] = max(diffs.values(), default=0.0)
    out["metrics_compared"] = len(diffs)
    print(f"\nevaluate(), {len(facts)} facts, no fluency (best of {repeats}; {len(diffs)} metrics, largest "
          f"difference between the modes {out['metrics_max_abs_diff']:.1e})")
    for row in out["modes"]:
        print(f"  {row['mode']:<7} {row['seconds']:>7.1f} s {row['gflop']:>8.0f} GFLOP {row['gflops']:>6.1f} GFLOP/s "
              f"{100 * row['share_of_roof']:>5.1f}% of roof  {row['ratio']:.2f}x")
    return out


def generate_one_prompt_at_a_time(model: Any, prompts: list[str], max_out_len: int = 100, top_k: int = 5,
                                  seed: int = 0) -> list[str]:
    """The fluency generation when issue #17 was filed: HF ``generate()`` per prompt, one global seed."""
    texts = []
    torch.manual_seed(seed)
    for prompt in prompts:
        tokens = model.to_tokens(prompt).to(model.device)
        n_new = max(0, max_out_len - (tokens.shape[1] - 1))
        tokens = model.generate(tokens, max_new_tokens=n_new, eos_token_id=None, do_sample=True, top_k=top_k,
                                top_p=1.0, temperature=1.0)
        texts.append(model.tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True))
    return texts


def bench_fluency(model: Any, facts: list[Any]) -> dict[str, Any]:
    """ROME's fluency generation for ``facts`` (their first two generation prompts, 100 tokens, top-5):
    one prompt at a time through ``generate()`` vs :func:`generate_texts` (left-padded batches, KV
    cache, a seeded generator per row). Texts differ (other random streams); the entropies are compared."""
    prompts = [p for f in facts for p in generation_prompts(f, 2)]
    t = time.perf_counter()
    old = generate_one_prompt_at_a_time(model, prompts)
    t_old = time.perf_counter() - t
    t = time.perf_counter()
    new = generate_texts(model, prompts, max_out_len=100, top_k=5, seed=0)
    t_new = time.perf_counter() - t
    h_old = sum(ngram_entropy(x) for x in old) / len(old)
    h_new = sum(ngram_entropy(x) for x in new) / len(new)
    print(f"\nfluency generation, {len(prompts)} prompts x 100 tokens: one at a time {t_old:.1f} s (entropy "
          f"{h_old:.3f}), batched {t_new:.1f} s (entropy {h_new:.3f}): {t_old / t_new:.2f}x")
    return {"n_prompts": len(prompts), "one_at_a_time_s": t_old, "batched_s": t_new, "ratio": t_old / t_new,
            "entropy_one_at_a_time": h_old, "entropy_batched": h_new}


def every(facts: list[Any], n: int) -> list[Any]:
    """``n`` facts at an even stride through the bundled set (the same selection in every section)."""
    return facts[:: max(1, len(facts) // n)][:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=3, help="bundled facts to edit (spread over the set)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default="phases,paths,evaluate",
                    help="phases (FLOPs per phase), path_choice (every v*/z path on tiny GPT-2, tiny Llama and the "
                         "default model: the fastest correct one per architecture), paths (the v*/z paths side by "
                         "side), memit_flops (FLOPs of the "
                         "MEMIT batch timed in paths), z_batch (a MEMIT batch's z one fact at a time vs 10 "
                         "per batched forward), evaluate (scoring modes)")
    ap.add_argument("--eval-facts", type=int, default=100, help="facts evaluated together for the scoring comparison")
    ap.add_argument("--fluency-facts", type=int, default=20, help="facts whose fluency generation is timed both ways")
    ap.add_argument("--memit-facts", type=int, default=10, help="MEMIT batch size for the path comparison")
    ap.add_argument("--memit-paths", default=",".join(PATHS),
                    help="paths timed on the MEMIT batch (the bridge one fact at a time always runs: the baseline)")
    ap.add_argument("--out", default=str(RESULTS / "bench_compute.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    all_facts = load_bundled_facts()
    facts = every(all_facts, args.facts)
    hp = ROMEHyperParams.for_model(model)
    d, f, v = model.arch.d_model, model.arch.d_mlp, model.hf.config.vocab_size
    roof = matmul_roof([(512, d, f), (512, d, v), (2048, 2048, 2048)])
    bound = roof["gflops"]
    bandwidth = memory_bandwidth()
    roof["copy_gbytes_per_s"] = bandwidth
    print(f"float32 matmul roof on {torch.get_num_threads()} threads: {bound:.0f} GFLOP/s "
          f"({', '.join(f'{k} {x:.0f}' for k, x in roof['by_shape'].items())}); copy bandwidth {bandwidth:.1f} GB/s")
    out = Path(args.out)
    # sections not run this time keep their previous numbers, and in "roofs" the roof of the run that measured them
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    roofs = report.setdefault("roofs", {})
    report.update({"model": model.name, "fingerprint": model.fingerprint, "torch_threads": torch.get_num_threads(),
                   "argv": sys.argv[1:], "roof": roof, "n_facts": len(facts), "layer": hp.layer})
    only = set(args.only.split(","))
    if "phases" in only:
        for path in PATHS:
            with v_path(path):
                print(f"\n-- v*/z forward pass: {path}")
                report[f"phases_{path}"] = phases_report(model, facts, hp, bound, bandwidth)
        roofs["phases"] = roof
    memit_facts = every(all_facts, args.memit_facts)
    if "paths" in only:
        report["paths"] = bench_paths(model, facts, hp, memit_facts, MEMITHyperParams.for_model(model),
                                      tuple(args.memit_paths.split(",")))
        roofs["paths"] = roof
    if "z_batch" in only:
        report["z_batch"] = bench_z_batch(model, memit_facts, MEMITHyperParams.for_model(model))
        roofs["z_batch"] = roof
    if "memit_flops" in only:
        report["paths"]["memit"] = bench_memit_flops(model, memit_facts, MEMITHyperParams.for_model(model),
                                                     roofs.get("paths", roof)["gflops"], report)
    if "path_choice" in only:
        models = {"tiny-gpt2": tiny_model("gpt2"), "tiny-llama": tiny_model("llama"), model.name: model}
        report["path_choice"] = bench_path_choice(models, all_facts, n_rome=args.facts, n_memit=args.facts)
        report["path_choice"]["torch_threads"] = torch.get_num_threads()
        roofs["path_choice"] = roof
    if "evaluate" in only:
        report["evaluate"] = bench_evaluate(model, every(all_facts, args.eval_facts), bound)
        report["fluency"] = bench_fluency(model, every(all_facts, args.fluency_facts))
        roofs["evaluate"] = roofs["fluency"] = roof
    write_json_atomic(out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
