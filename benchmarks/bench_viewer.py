"""The circuit graph at the default model's size: how long a figure of thousands of edges takes to build and draw.

The graph is SmolLM2-135M's (30 layers, 9 heads, 3 KV heads: 70,651 edges); the scores are synthetic
and heavy-tailed (the figure's cost depends on how many edges it draws, not on their values), so no
model is loaded. For each circuit size, the strongest edges are kept (``top_n_edges``) and measured:

* ``build_s``: :meth:`Circuit.figure` (binning, layout, node cards), median of ``--repeats``;
* ``to_json_s`` / ``json_mb``: plotly's JSON of that figure (what Streamlit sends to the browser);
* ``export_s``: :meth:`Circuit.to_graph_json`, the documented export;
* ``render_s`` (when Chromium and Playwright are installed): time from ``Plotly.newPlot`` to its
  promise resolving in headless Chromium (software rendering), median of ``--repeats``;
  ``render_first_s`` the first of them (it also starts WebGL); ``hover_s``: one hover event on a node
  (the card appearing) once drawn.

Target (issue #35): a figure of 7,000+ edges renders in <= 3 s. Prints a table and writes
``benchmarks/results/bench_viewer.json``.

    python benchmarks/bench_viewer.py [--sizes 1000 7000 15000] [--repeats 3] [--no-browser]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from knowscope.circuits.circuit import Circuit
from knowscope.circuits.graph import Graph
from knowscope.circuits.pruning import top_n_edges
from knowscope.facts import write_json_atomic

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("bench_viewer")
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def synthetic_circuit(n_edges: int, seed: int = 0) -> Circuit:
    """A circuit of exactly ``n_edges`` edges on the default model's graph, heavy-tailed scores."""
    g = Graph(n_layers=30, n_heads=9, n_kv_heads=3)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(g.n_forward, g.n_slots, generator=gen) * torch.rand(g.n_forward, g.n_slots,
                                                                              generator=gen) ** 4
    scores = scores * g.edge_mask
    return Circuit(graph=g, scores=scores, mask=top_n_edges(g, scores, n_edges), faithfulness=0.8,
                   meta={"model": "synthetic (SmolLM2-135M graph)", "method": "synthetic"})


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def browser_times(fig_json: str, repeats: int = 3) -> dict[str, float] | None:
    """Render (median of ``repeats``; the first, with the page's WebGL start, apart) and one node hover
    of the figure in headless Chromium (None without a browser)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
        from plotly.offline import get_plotlyjs
    except ImportError:
        return None
    if not Path(chromium).is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "fig.html"
        html.write_text(f"<html><body><div id='g' style='width:1400px;height:650px'></div>"
                        f"<script>{get_plotlyjs()}</script></body></html>")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROME_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(html.as_uri())
            renders = page.evaluate("""async ([spec, repeats]) => {
                const out = [];
                for (let i = 0; i < repeats; i++) {
                    const fig = JSON.parse(spec);
                    Plotly.purge('g');
                    const t = performance.now();
                    await Plotly.newPlot('g', fig.data, fig.layout);
                    out.push((performance.now() - t) / 1000);
                }
                return out;
            }""", [fig_json, repeats])
            hover = page.evaluate("""async () => {
                const gd = document.getElementById('g');
                const nodes = gd.data.length - 1;
                const t = performance.now();
                Plotly.Fx.hover('g', [{curveNumber: nodes, pointNumber: 1}]);
                await new Promise(r => requestAnimationFrame(() => r()));
                const shown = document.querySelectorAll('.hoverlayer .hovertext').length;
                return [(performance.now() - t) / 1000, shown];
            }""")
            browser.close()
    return {"render_s": statistics.median(renders), "render_first_s": float(renders[0]), "hover_s": float(hover[0]),
            "hover_cards": int(hover[1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 7000, 15000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "bench_viewer.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    print(f"{'edges':>7} {'build s':>8} {'to_json s':>9} {'MB':>6} {'export s':>8} {'render s':>8} {'hover s':>8}")
    for n in args.sizes:
        c = synthetic_circuit(n)
        build, fig = timed(c.figure, args.repeats)
        to_json, spec = timed(fig.to_json, args.repeats)
        export, _ = timed(c.to_graph_json, args.repeats)
        row: dict[str, Any] = {"edges": c.n_edges, "edges_drawn": sum(
            sum(1 for x in t.x if x != x) for t in fig.data if t.mode == "lines"),
            "traces": len(fig.data), "build_s": build, "to_json_s": to_json, "json_mb": len(spec) / 1e6,
            "export_s": export}
        if not args.no_browser:
            found = browser_times(spec, args.repeats)
            if found is not None:
                row.update(found)
        rows.append(row)
        print(f"{row['edges']:>7} {build:>8.3f} {to_json:>9.3f} {row['json_mb']:>6.2f} {export:>8.3f} "
              f"{row.get('render_s', float('nan')):>8.3f} {row.get('hover_s', float('nan')):>8.3f}")
    target = next((r for r in rows if r["edges"] >= 7000), None)
    if target is not None:
        total = target["build_s"] + target["to_json_s"] + target.get("render_s", 0.0)
        print(f"\n{target['edges']} edges: build + JSON + browser render = {total:.2f} s (target <= 3 s)")
    out = {"graph": {"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "n_edges": Graph(30, 9, 3).n_edges},
           "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "rows": rows}
    write_json_atomic(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
