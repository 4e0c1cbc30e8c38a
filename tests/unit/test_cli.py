"""The CLI: help lists the subcommands, results go to --json, bad input is one clear stderr line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from knowscope.cli import main
from knowscope.facts import Fact, save_facts


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("info", "predict", "facts", "demo", "view"):
        assert name in out


def test_predict_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["predict", "--model", "tiny-llama", "--prompt", "The capital of France is", "--top-k", "3",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["top"]) == 3
    assert data["top"][0]["prob"] >= data["top"][1]["prob"] >= data["top"][2]["prob"]


def test_info_json(tmp_path):
    out = tmp_path / "info.json"
    assert main(["info", "--model", "tiny-gpt2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["architecture"]["family"] == "gpt2" and data["architecture"]["n_layers"] == 4
    assert data["parameters"] > 0 and data["fingerprint"]


def test_facts_on_a_file(tmp_path):
    facts = [Fact(subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome",
                  relation_id="P36", case_id=0)]
    path = save_facts(facts, tmp_path / "facts.json")
    out = tmp_path / "acc.json"
    assert main(["facts", "--model", "tiny-llama", "--data", str(path), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"accuracy", "rows"} and len(data["rows"]) == 1
    assert 0.0 <= data["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--model", "/nonexistent/model/dir", "--prompt", "x"], "does not exist"),
        (["predict", "--model", "tiny-llama", "--prompt", "x", "--top-k", "0"], "--top-k must be >= 1"),
        (["facts", "--model", "tiny-llama", "--data", "{bad}"], "is not valid JSON"),
        (["facts", "--model", "tiny-llama", "--data", "{missing}"], "does not exist"),
        (["facts", "--model", "tiny-llama", "--data", "{wrong}"], "unknown format"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "wrong.json").write_text(json.dumps([{"question": "what?"}]))
    argv = [a.format(bad=tmp_path / "bad.json", missing=tmp_path / "missing.json", wrong=tmp_path / "wrong.json")
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "knowscope.cli", "info", "--model", str(tmp_path / "no-model")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr


def test_view_refuses_bad_arguments(tmp_path, capsys):
    assert main(["view", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["view", str(f)]) == 2
    assert "not a runs folder" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--address", "two words"]) == 2
    assert "--address" in capsys.readouterr().err


def test_view_command_line():
    from knowscope.viewer import APP, command, environment

    cmd = command("runs", 8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and str(APP) in cmd and "8600" in cmd and "localhost" in cmd
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "viewer"  # no Deploy button
    remote = command("runs", 8600, address="0.0.0.0")
    assert remote[remote.index("--server.address") + 1] == "0.0.0.0"
    env = environment("runs", "tiny-llama")
    assert env["KNOWSCOPE_MODEL"] == "tiny-llama" and env["KNOWSCOPE_RUNS"].endswith("runs")
