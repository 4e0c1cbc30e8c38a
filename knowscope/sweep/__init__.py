"""Sweeps: facts × methods × layers × seeds, each cell an edit + evaluation + undo, on Ray.

Does locating inform editing? A sweep measures edit success at every layer next to each fact's
causal-tracing effect there, so the layer ``locate()`` picks can be checked against the layer where
edits work best (Hase et al. 2023, "Does Localization Inform Editing?")::

    spec = SweepSpec("smollm2-135m", facts, methods=["rome"], layers="all")
    run_sweep(spec, "runs/rome.sqlite", workers=2)        # resumable; --no-ray: use_ray=False
    res = SweepResult.load("runs/rome.sqlite")
    res.summary()["correlation"], res.best_layer("rome"), res.located_layer()
    recommend_layer("runs/rome.sqlite", "rome")

Layout: ``grid`` (cells and settings) → ``store`` (SQLite) → ``cells`` (a worker's work) →
``runner`` (Ray or in-process, retries, resume) → ``analysis`` (correlations, best layer, figures).
"""

from knowscope.sweep.analysis import LayerRecommendation, SweepResult, recommend_layer, spearman
from knowscope.sweep.cells import CellRunner
from knowscope.sweep.grid import METHODS, Cell, SweepSpec, edited_layers, parse_layers, spread
from knowscope.sweep.runner import SweepReport, import_ray, run_sweep
from knowscope.sweep.store import SettingsMismatchError, StoreBusyError, SweepStore

__all__ = [
    "METHODS", "Cell", "CellRunner", "LayerRecommendation", "SettingsMismatchError", "StoreBusyError",
    "SweepReport", "SweepResult", "SweepSpec", "SweepStore", "edited_layers", "import_ray", "parse_layers",
    "recommend_layer", "run_sweep", "spearman", "spread",
]
