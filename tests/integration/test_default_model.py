"""The real default model: it loads, knows famous facts, and knows the bundled fact set."""

from __future__ import annotations

import json
import subprocess
import sys

from knowscope.knowledge import fact_accuracy


def test_default_model_architecture(default_model):
    a = default_model.arch
    assert (a.family, a.n_layers, a.n_heads, a.n_kv_heads, a.d_model) == ("llama", 30, 9, 3, 576)
    assert a.mlp_out_name(12) == "model.layers.12.mlp.down_proj.weight"


def test_capital_of_france(default_model):
    (text, prob, _), *_ = default_model.top_k("The capital of France is", 5)
    assert text == " Paris" and prob > 0.1


def test_bundled_facts_are_known(default_model, bundled_facts):
    assert len(bundled_facts) >= 150
    report = fact_accuracy(default_model, bundled_facts)
    assert report.accuracy >= 0.95, report.by_relation()


def test_the_extended_fact_set_is_known(default_model):
    from knowscope.facts import load_bundled_facts

    facts = load_bundled_facts(name="extended")
    report = fact_accuracy(default_model, facts)
    assert len(facts) >= 650 and report.accuracy >= 0.95, report.by_relation()
    extra = load_bundled_facts(name="extra")
    report = fact_accuracy(default_model, extra)
    assert len(extra) >= 200 and report.accuracy >= 0.95, report.by_relation()


def test_predict_cli_eiffel_tower(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "knowscope.cli", "predict", "--prompt",
         "The Eiffel Tower is located in the city of", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["top"][0]["token"] == " Paris"


def test_second_load_uses_the_cache_not_the_gguf(default_model, monkeypatch):
    """Once converted, loading never de-quantizes the GGUF again (timing: benchmarks/bench_loading.py)."""
    import knowscope.models as models

    def fail(*_args, **_kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(models.sources, "_convert_gguf", fail)
    again = models.load_model(device="cpu")
    assert again.fingerprint == default_model.fingerprint
