"""Execute the notebooks in place so that they are committed with their outputs, and check those outputs.

Each notebook runs top to bottom in a fresh kernel (one at a time; set OMP_NUM_THREADS to share a machine).
Plotly figures keep their figure JSON (``application/vnd.plotly.v1+json``, which JupyterLab, VS Code and
nbviewer draw) and a one-line text stand-in; the HTML copy and the plotly.js bundle a kernel also emits
(megabytes per notebook) are dropped. A notebook whose outputs hold a traceback, an error output, this
machine's home or cache folder, or a warning is reported and the script exits 1 (the notebook is still
written, so the output can be read).

Run: python scripts/run_notebooks.py [notebooks/01_causal_tracing.ipynb ...]   (default: every notebook)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
PLOTLY = "application/vnd.plotly.v1+json"
TIMEOUT_S = 1800


def slim(nb: nbformat.NotebookNode) -> None:
    """Keep each plotly figure as its JSON plus a text line; drop HTML copies and the plotly.js bundle."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY in data:
                fig = data[PLOTLY]
                title = ((fig.get("layout") or {}).get("title") or {}).get("text") or "figure"
                out["data"] = {PLOTLY: fig, "text/plain": f"<plotly figure: {title}>"}
            elif out.get("output_type") == "display_data" and set(data) <= {"text/html", "text/plain"} and \
                    "plotly" in str(data.get("text/html", "")).lower():
                continue  # the renderer's plotly.js bundle, not a result
            kept.append(out)
        cell["outputs"] = kept


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What a committed notebook's outputs must not show."""
    private = [p for p in {str(Path.home()), os.environ.get("KNOWSCOPE_CACHE", ""), str(ROOT), sys.prefix,
                           "site-packages"} if len(p) > 1]
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: error {out.get('ename')}: {out.get('evalue')}")
                continue
            text = out.get("text", "") if out.get("output_type") == "stream" else \
                str(out.get("data", {}).get("text/plain", ""))
            if "Traceback" in text:
                found.append(f"cell {i}: a traceback in the output")
            if re.search(r"Warning\b|warnings\.warn", text):
                found.append(f"cell {i}: a warning in the output: {text.strip().splitlines()[0][:120]}")
            for p in private:
                if p in text:
                    found.append(f"cell {i}: this machine's path {p} in the output")
    return found


def run(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        slim(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.get("metadata", {}).pop("execution", None)  # timestamps: noise in every diff
        nbformat.write(nb, path)
    found = problems(nb)
    size = path.stat().st_size / 1024
    print(f"{path.name}: {time.perf_counter() - started:.0f} s, {size:.0f} KiB"
          + ("" if not found else "\n  " + "\n  ".join(found)), flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    args = parser.parse_args()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    bad = 0
    for path in paths:
        bad += bool(run(path))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
