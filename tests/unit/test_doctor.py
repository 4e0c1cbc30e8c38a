"""``knowscope doctor``: exit 0 on a working install, exit 1 with a one-line cause when a convention breaks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from knowscope import compat
from knowscope.cli import main
from knowscope.models import tiny_model


def test_doctor_ok_through_the_entry_point(tmp_path):
    out = tmp_path / "doctor.json"
    proc = subprocess.run([sys.executable, "-m", "knowscope.cli", "doctor", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("wrote")]
    assert lines[-1] == "ok"
    data = json.loads(out.read_text())
    assert data["ok"] and {c["check"] for c in data["checks"]} == {"kv_cache", "fast_trace", "edit_undo"}
    for name in ("python", "torch", "transformers", "transformer-lens", "streamlit"):
        assert data["versions"][name]
    assert "cache" in data and data["cache_bytes"] >= 0


def _sabotaged_cache(*args, **kwargs):
    """A model whose attention never sees the KV cache (the transformers 5.24 drift, unrepaired)."""
    model = tiny_model("llama")

    def drop(module, a, kw):
        return a, {k: v for k, v in kw.items() if not compat.is_cache_like(v) and k != "past_key_values"}

    for blk in model.bridge.blocks:
        blk.attn.register_forward_pre_hook(drop, with_kwargs=True)
    model.compat = compat.detect(model.bridge, model.hf, model.to_tokens("The capital of France is"))
    return model


def test_doctor_fails_with_one_line_cause_when_cache_is_dropped(monkeypatch, capsys):
    monkeypatch.setattr("knowscope.models.load_model", _sabotaged_cache)
    assert main(["doctor"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("kv_cache:") and "Fix: make setup" in last


def test_doctor_fails_when_the_fast_trace_cannot_run(monkeypatch, capsys):
    from knowscope.circuits.tracing import partial as tracing

    real = tracing._block
    monkeypatch.setattr(tracing, "_block", lambda m, layer, h, start, cache: real(m, layer, h, start, cache) * 2)
    monkeypatch.setattr("knowscope.models.load_model", lambda *a, **k: tiny_model("gpt2"))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("fast_trace:") and "method='reference'" in out[-1]
    assert any(ln.startswith("ok") and "edit_undo" in ln for ln in out)


@pytest.mark.parametrize("bad", [["doctor", "--model", "no/such/dir/x"]])
def test_doctor_reports_a_model_that_will_not_load(bad, capsys):
    assert main(bad) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("load_model:")
