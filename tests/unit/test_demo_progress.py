"""The demo on a tiny model end to end (its sweep and probe for the viewer's Sweeps and Probes pages, its
per-step timings, a second run replacing the first), and a progress line for every stage of the commands
that can run long."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_run import run_cli as _cli

from knowscope.commands import demo

DEMO = ["demo", "--model", "tiny-llama", "--samples", "1", "--locate-facts", "2", "--circuit-facts", "2",
        "--sweep-facts", "2", "--probe-facts", "8"]
STEPS = ["load", "knowledge", "trace", "locate", "circuit", "key_stats", "sweep", "probe", "edit", "verify", "save"]


def _viewer_pages_have_content(runs: Path, n_layers: int, monkeypatch) -> None:
    """``knowscope view`` on the demo's folder: the Sweeps page shows its sweep, the Probes page its probe."""
    from streamlit.testing.v1 import AppTest

    import knowscope.viewer

    monkeypatch.setenv("KNOWSCOPE_RUNS", str(runs))
    monkeypatch.setenv("KNOWSCOPE_MODEL", "tiny-llama")
    at = AppTest.from_file(str(Path(knowscope.viewer.__file__).parent / "app.py"), default_timeout=300)
    at.run()
    at.sidebar.radio(key="page").set_value("Sweeps").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert {m.label: m.value for m in at.metric}["cells"] == f"{2 * n_layers} of {2 * n_layers}"
    at.sidebar.radio(key="page").set_value("Probes").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert "best logistic" in {m.label for m in at.metric}


def test_demo_writes_a_sweep_and_a_probe_and_times_its_steps(tmp_path, capsys, monkeypatch):
    from knowscope.probes.linear import ProbeReport
    from knowscope.sweep import SweepResult
    from knowscope.viewer.runs import scan_runs
    from knowscope.viewer.views.sweeps import find_stores

    out, summary = tmp_path / "runs" / "demo", tmp_path / "demo.json"
    code, stdout, err = _cli([*DEMO, "--out", out, "--json", summary], capsys)
    assert code == 0, err
    result = json.loads(summary.read_text())
    assert list(result["timings"]) == STEPS
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in result["timings"].values())
    for step in STEPS:  # a line per step, with its time
        assert re.search(rf"^  \({step}: \d+\.\d s\)$", stdout, re.M), step

    assert sorted(p.name for p in out.iterdir()) == sorted([*demo.SAVED, "knowscope-group.json"])
    assert find_stores(out) == [out / "sweep.sqlite"]  # what the Sweeps page lists
    sweep = SweepResult.load(out / "sweep.sqlite")
    layers = result["sweep"]["layers"]
    assert sweep.methods == ["rome"] and sweep.layers == layers and len(sweep.facts) == 2
    assert len(sweep.cells) == 2 * len(layers) and not sweep.errors and len(sweep.traces) == 2
    assert result["located_layer"] in layers and sweep.summary("rome")["best_layer"] in layers
    probe = ProbeReport.load(out / "probe")  # what the Probes page lists
    assert probe.meta["n_positive"] == 8 and set(probe.accuracy) == {"mean_diff", "pca", "logistic"}
    assert result["probe"]["accuracy"] == probe.accuracy
    kinds = {r.kind for r in scan_runs(out.parent)}
    assert {"probe_report", "logit_lens", "trace", "circuit"} <= kinds
    assert not any(p.name.startswith(".") or p.suffix == ".lock" for p in out.iterdir())

    _viewer_pages_have_content(out, len(layers), monkeypatch)

    # the second run reads the key statistics from the cache and replaces the first one's output
    code, stdout, err = _cli([*DEMO, "--out", out], capsys)
    assert code == 0, err
    assert "read from the cache" in stdout and "replaced the earlier demo's output" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]
    assert len(SweepResult.load(out / "sweep.sqlite").cells) == 2 * len(layers)


@pytest.mark.parametrize("flag", ["--sweep-facts", "--probe-facts", "--samples"])
def test_demo_refuses_too_small_settings_before_any_work(tmp_path, capsys, flag):
    code, stdout, err = _cli([*DEMO, "--out", tmp_path / "demo", flag, "0"], capsys)
    assert code == 2 and f"{flag} must be at least" in err and len(err.strip().splitlines()) == 1
    assert stdout == "" and not (tmp_path / "demo").exists()


def test_sweep_layers_cover_the_located_the_default_and_a_deeper_layer():
    assert demo.sweep_layers(1, 5, 30) == [1, 5, 11]
    assert demo.sweep_layers(4, 4, 30) == [4, 14]
    assert demo.sweep_layers(3, 3, 4) == [3]  # clipped at the last layer
    assert demo.sweep_layers(0, 2, 4) == [0, 1, 2]


def test_missing_stats_names_what_a_first_run_computes(tiny_llama, tmp_path, monkeypatch):
    from knowscope.editing.stats import key_stats, missing_stats

    monkeypatch.setenv("KNOWSCOPE_CACHE", str(tmp_path))
    assert missing_stats(tiny_llama, [2, 0], n_tokens=64) == [0, 2]
    key_stats(tiny_llama, [0], n_tokens=64, progress=False)
    assert missing_stats(tiny_llama, [2, 0], n_tokens=64) == [2]
    assert missing_stats(tiny_llama, [0], n_tokens=128) == [0]  # other settings are other statistics


TINY = ["--model", "tiny-llama"]


@pytest.mark.parametrize("argv, stages, bars", [
    (["trace", *TINY, "--prompt", "Lionel Messi plays soccer in", "--subject", "Lionel Messi", "--samples", "1"],
     ["causal trace of 'Lionel Messi plays soccer in'"], ["trace (fast): 100%"]),
    (["trace", *TINY, "--data", "bundled", "--limit", "2", "--samples", "1", "--kind", "mlp"],
     ["causal traces of 2 facts"], ["trace facts: 100%"]),
    (["circuit", *TINY, "--data", "bundled", "--limit", "2", "--ig-steps", "1"],
     ["eap-ig scores of", "faithfulness curve", "the chosen circuit's metric"], []),
    (["edit", *TINY, "--method", "rome", "--limit", "2", "--sequential", "--no-fluency", "--no-generation",
      "--layers", "1"],
     ["the unedited model's predictions", "ROME: 2 facts in 2 edit(s), applied one after another",
      "evaluating all 2 facts"], []),
    (["edit", *TINY, "--method", "ft", "--limit", "1", "--no-fluency", "--no-generation", "--layers", "1"],
     ["FT: 1 facts in 1 edit(s), each evaluated and undone"], []),
    (["lens", *TINY, "--tuned", "--train", "--retrain", "--train-tokens", "64", "--steps", "2"],
     ["tuned lens: loaded from the cache, or trained once on 64 tokens"],
     ["tuned lens: residuals: 100%", "tuned lens: 100%"]),
    (["sweep", *TINY, "--no-ray", "--workers", "1", "--layers", "0", "--limit", "1", "--samples", "1", "--store",
      "{tmp}/s.sqlite"],
     ["sweep into", "each of 1 facts traced once"], ["sweep: 100%"]),
])
def test_long_commands_say_each_stage(argv, stages, bars, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are for a terminal (commands.bars)
    code, stdout, err = _cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 0, err
    assert all(b in err for b in bars), err  # the bars inside a stage (stderr)
    lines = [line for line in stdout.splitlines() if line.startswith("... ")]
    at = [next((i for i, line in enumerate(lines) if want in line), None) for want in stages]
    assert None not in at and at == sorted(at), (stages, lines)  # every stage, in order


def test_unlearn_says_each_stage(tmp_path, capsys):
    from knowscope.editing.unlearning import UnlearnItem, UnlearnSet

    path = tmp_path / "set.json"
    UnlearnSet([UnlearnItem("Q: Who wrote Hamlet? A:", "Shakespeare")],
               [UnlearnItem("Q: Capital of France? A:", "Paris")]).save(path)
    code, stdout, err = _cli(["unlearn", *TINY, "--method", "ga", "--data", path, "--max-steps", "1",
                              "--no-fluency"], capsys)
    assert code == 0, err
    stages = [line for line in stdout.splitlines() if line.startswith("... ")]
    assert [s.split(":")[0] for s in stages] == ["... the unedited model's answers on 1 forget and 1 retain items",
                                                 "... Gradient ascent", "... evaluating the unlearned model"], stages


def test_a_notebook_without_ipywidgets_gets_no_tqdm_warning():
    """``import knowscope`` in a Jupyter kernel without ipywidgets: no ``TqdmWarning: IProgress not found``
    (huggingface_hub's import of tqdm.auto would print it in every notebook), and knowscope's bars are text bars."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ipywidgets") is not None:
        pytest.skip("ipywidgets is installed: tqdm.auto draws widgets and never warns")
    code = (
        "import sys, types, warnings\n"
        "warnings.simplefilter('always')  # printed on stderr (an error would be swallowed by tqdm's fallback)\n"
        "sys.modules['ipykernel.zmqshell'] = types.ModuleType('ipykernel.zmqshell')  # what tqdm.auto looks for\n"
        "ipython = types.ModuleType('IPython')\n"
        "class ZMQInteractiveShell: pass\n"
        "ipython.get_ipython = ZMQInteractiveShell\n"
        "sys.modules['IPython'] = ipython\n"
        "import knowscope\n"
        "import huggingface_hub.utils.tqdm  # imports tqdm.auto, as loading a model does\n"
        "from tqdm.std import tqdm\n"
        "from knowscope.progress import progress_bar\n"
        "bar = progress_bar(range(2), disable=True)\n"
        "assert isinstance(bar, tqdm) and not any('notebook' in c.__module__ for c in type(bar).__mro__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "IProgress" not in out.stderr, out.stderr[-2000:]
