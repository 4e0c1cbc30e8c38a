"""The paraphrase vs relation-specificity frontier of every editor, as an SVG for the docs.

Reads ``benchmarks/results/bench_evaluation.json`` (every editor on the same facts, ``editors``) and
writes ``docs/frontier.svg``: one point per editor at (paraphrase, relation specificity), teacher-forced
(filled: CounterFact paraphrase score, EasyEdit relation specificity) and generated (open: greedy
paraphrase, greedy relation specificity), joined by a line. An editor that edits the fact sits at the
top right; one that edits the subject at the bottom right; one that edits one prompt at the top left.
No plotting library: the SVG is written by hand so the docs build needs nothing.

    python benchmarks/plot_frontier.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"unedited": "unedited", "rome_auto": "ROME auto", "rome_default": "ROME L5", "ft": "FT",
          "memit_batch": "MEMIT batch", "null_space_seq": "null-space MEMIT", "grace": "GRACE last",
          "grace_subject": "GRACE subject", "wise": "WISE", "factkey": "FactKey"}
W, H, M, RIGHT = 660, 440, 60, 160  # RIGHT: room for the labels of points at paraphrase 1


def _xy(x: float, y: float) -> tuple[float, float]:
    return M + x * (W - M - RIGHT), H - M - y * (H - 2 * M)


def svg(points: dict[str, tuple[float, float, float | None, float | None]]) -> str:
    """``points``: editor -> (paraphrase, rel. spec., gen. paraphrase, gen. rel. spec.)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             'font-size="11">', f'<rect width="{W}" height="{H}" fill="white"/>']
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#999"/>')
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        gx, _ = _xy(t, 0)
        _, gy = _xy(0, t)
        parts.append(f'<line x1="{gx}" y1="{y0}" x2="{gx}" y2="{y1}" stroke="#eee"/>')
        parts.append(f'<line x1="{x0}" y1="{gy}" x2="{x1}" y2="{gy}" stroke="#eee"/>')
        parts.append(f'<text x="{gx}" y="{y0 + 14}" text-anchor="middle">{t:.2f}</text>')
        parts.append(f'<text x="{x0 - 6}" y="{gy + 4}" text-anchor="end">{t:.2f}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{H - 18}" text-anchor="middle">paraphrase (the edit generalises)'
                 '</text>')
    parts.append(f'<text transform="translate(16,{(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">relation '
                 "specificity (the subject's other facts kept)</text>")
    parts.append(f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="13">Paraphrase vs relation specificity '
                 "(filled: teacher-forced, open: generated)</text>")
    placed: list[tuple[float, float]] = []
    for name, (px, py, gx_, gy_) in points.items():
        cx, cy = _xy(px, py)
        ly = cy - 6
        while any(abs(cx - x) < 60 and abs(ly - y) < 12 for x, y in placed):  # labels of coinciding points
            ly += 13
        placed.append((cx, ly))
        if gx_ is not None and gy_ is not None:
            ox, oy = _xy(gx_, gy_)
            parts.append(f'<line x1="{cx}" y1="{cy}" x2="{ox}" y2="{oy}" stroke="#888"/>')
            parts.append(f'<circle cx="{ox}" cy="{oy}" r="4" fill="white" stroke="#1f77b4"/>')
        color = "#d62728" if name == "FactKey" else "#1f77b4"
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="5" fill="{color}"/>')
        parts.append(f'<text x="{cx + 7}" y="{ly}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "bench_evaluation.json"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "frontier.svg"))
    args = ap.parse_args(argv)
    editors = json.loads(Path(args.results).read_text()).get("editors", {})
    points = {}
    for mode, row in editors.items():
        m = row.get("metrics") or {}
        if m.get("paraphrase_score") is None or m.get("relation_specificity") is None or not row.get("facts"):
            continue
        points[LABELS.get(mode, mode)] = (m["paraphrase_score"], m["relation_specificity"], m.get("gen_paraphrase"),
                                          m.get("gen_relation_specificity"))
    Path(args.out).write_text(svg(points))
    for name, p in points.items():
        print(f"{name:>18}: paraphrase {p[0]:.3f} (gen {p[2]}), relation specificity {p[1]:.3f} (gen {p[3]})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
