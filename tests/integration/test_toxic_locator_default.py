"""The contrastive toxic-region locator on the default model: safe and unsafe responses separate on
held-out items far above both controls, and the layer it picks is not the layer either control picks.
(The per-layer DINM sweep behind the choice is measured in benchmarks/bench_detox.py --sweep.)"""

from __future__ import annotations

import pytest

from knowscope.circuits import locate_toxic_layers
from knowscope.safeedit import load_bundled_safety

pytestmark = pytest.mark.integration


def test_probe_locator_beats_its_controls(default_model):
    items = load_bundled_safety()[::4]  # 16 items over the nine categories
    loc = locate_toxic_layers(default_model, items, folds=4)
    print(loc.to_dict())
    assert loc.layer not in loc.control_layers.values()
    for name, ctrl in loc.controls.items():
        assert float(ctrl.abs().max()) < 2.0, name  # labels that carry no toxicity separate nothing
    assert float(loc.score[loc.layer]) > 3.0 * float(max(c.abs().max() for c in loc.controls.values()))
    assert float(loc.accuracy[loc.layer]) >= 0.9
    assert float(loc.margin.min()) > 0  # every layer separates the real labels better than the controls
