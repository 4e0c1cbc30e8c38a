"""Loading time of the default model: first conversion (cold cache) and later loads, each in a new process.

Prints a table and writes benchmarks/results/loading.json. Run: python benchmarks/bench_loading.py [--cold]
(--cold converts into a temporary cache, ~20-30 s, to measure the one-time GGUF conversion as well).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = (
    "import time; t0=time.time(); from knowscope.models import load_model; t1=time.time(); "
    "m=load_model(device='cpu'); t2=time.time(); m.top_k('The capital of France is', 1); t3=time.time(); "
    "print(t1-t0, t2-t1, t3-t2)"
)


def measure(env: dict[str, str]) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    imp, load, first = (float(x) for x in out.stdout.split())
    return imp, load, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="also measure the first conversion in a fresh cache")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, KNOWSCOPE_CACHE=tmp)
            rows.append(("cold (GGUF conversion)", *measure(env)))
            rows.append(("warm after cold", *measure(env)))
    for i in range(args.repeats):
        rows.append((f"warm #{i + 1}", *measure(dict(os.environ))))
    print(f"{'case':<24}{'import s':>10}{'load_model s':>14}{'1st forward s':>15}")
    for name, imp, load, first in rows:
        print(f"{name:<24}{imp:>10.2f}{load:>14.2f}{first:>15.2f}")
    out = Path(__file__).parent / "results" / "loading.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([dict(zip(["case", "import_s", "load_s", "first_forward_s"], r, strict=True))
                               for r in rows], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
