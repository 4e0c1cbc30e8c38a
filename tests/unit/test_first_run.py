"""First run fast and repeatable, saved work verifiable, every failure one line: the demo replaces its own
output, a full disk or a read-only folder is one line with nothing half-written, saved arrays carry a
checksum, memory sessions load in a fresh process, ``--data bundled`` everywhere, and small refusals."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from cli_run import run_cli as _cli
from safetensors import SafetensorError

from knowscope import results
from knowscope.cli import main
from knowscope.commands import demo
from knowscope.editing import EditResult, EditSession
from knowscope.facts import Fact
from knowscope.results import ResultFormatError, SaveRefusedError, check_writable, load_dir, save_dir


def _one_line(code, err, needle):
    assert code == 2, err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def _delta_edit(model, value: float = 1e-3) -> EditResult:
    name = model.arch.mlp_out_name(1)
    shape = model.named_parameters()[name].shape
    return EditResult(method="ft", model_name=model.name, fingerprint=model.fingerprint, layers=[1],
                      deltas={name: torch.full(shape, value)}, requests=[], hparams={}, seconds=0.0)


def _read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail as on a read-only file system (Errno 30). Tests run as root, for whom
    chmod does not make a folder read-only, so the error is injected where files and folders are made."""
    root = root.resolve()

    def under(p) -> bool:
        try:
            Path(os.fspath(p)).resolve().relative_to(root)
        except (TypeError, ValueError):
            return False
        return True

    def refuse(p):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(p))

    real_mkdir, real_mkdtemp, real_mkstemp, real_open = pathlib.Path.mkdir, tempfile.mkdtemp, tempfile.mkstemp, \
        builtins.open

    def mkdir(self, *a, **k):
        if under(self) and not self.exists():
            refuse(self)
        return real_mkdir(self, *a, **k)

    def mkdtemp(*a, dir=None, **k):  # noqa: A002 - tempfile's name
        if dir is not None and under(dir):
            refuse(dir)
        return real_mkdtemp(*a, dir=dir, **k)

    def mkstemp(*a, dir=None, **k):  # noqa: A002
        if dir is not None and under(dir):
            refuse(dir)
        return real_mkstemp(*a, dir=dir, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


# --- 1: the demo replaces its own earlier output ------------------------------------------------------


def test_demo_save_twice_replaces_its_own_output(tmp_path, tiny_gpt2):
    from knowscope.circuits import trace

    tr = trace(tiny_gpt2, "Lionel Messi plays soccer in", "Lionel Messi", samples=1, kinds="hidden")
    session = EditSession(tiny_gpt2)
    session.apply(_delta_edit(tiny_gpt2))
    out = tmp_path / "runs" / "demo"
    try:
        savers = [lambda d: tr.save(d / "trace"), lambda d: session.save(d / "edit")]
        assert demo.save_runs(out, savers) is False
        assert demo.save_runs(out, savers) is True  # the second demo replaces the first one's output
    finally:
        session.undo()
    assert sorted(p.name for p in out.iterdir()) == ["edit", "knowscope-group.json", "trace"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no temporaries left beside it
    assert load_dir(out / "trace")[0]["kind"] == "trace"
    demo.check_out(out)  # the CLI's early check accepts it too

    legacy = tmp_path / "legacy"  # a demo saved before the group marker: the demo's result folders, no marker
    for name, kind in demo.PARTS.items():
        save_dir(legacy / name, kind, {}, {})
    assert demo.save_runs(legacy, [lambda d: tr.save(d / "trace")]) is True
    assert sorted(p.name for p in legacy.iterdir()) == ["knowscope-group.json", "trace"]
    partial = tmp_path / "partial"  # one knowscope result named like a part is not a demo's output
    tr.save(partial / "trace")
    assert not demo.own_output(partial)
    with pytest.raises(SaveRefusedError, match="did not write"):
        demo.save_runs(partial, [lambda d: tr.save(d / "trace")])

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    tr.save(foreign / "trace")
    with pytest.raises(SaveRefusedError, match="did not write"):
        demo.check_out(foreign)
    with pytest.raises(SaveRefusedError, match="did not write"):
        demo.save_runs(foreign, [lambda d: tr.save(d / "trace")])
    assert (foreign / "notes.txt").read_text() == "precious"


def test_demo_checks_its_folder_before_any_work(tmp_path, capsys, tiny_gpt2):
    from knowscope.circuits import trace

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    code, _, err = _cli(["demo", "--model", tmp_path / "no-model", "--out", foreign], capsys)
    _one_line(code, err, "did not write")
    tr = trace(tiny_gpt2, "Lionel Messi plays soccer in", "Lionel Messi", samples=1, kinds="hidden")
    mine = tmp_path / "demo"
    demo.save_runs(mine, [lambda d: tr.save(d / "trace")])
    code, _, err = _cli(["demo", "--model", tmp_path / "no-model", "--out", mine], capsys)
    _one_line(code, err, "does not exist")  # the folder passed: the error is the missing model


# --- 2: a full disk or a read-only folder is one line, nothing half-written ------------------------------


TRACE = ["trace", "--model", "tiny-gpt2", "--prompt", "Lionel Messi plays soccer in", "--subject", "Lionel Messi",
         "--samples", "1", "--kind", "hidden"]


def test_full_disk_while_saving_is_one_line(tmp_path, capsys, monkeypatch):
    def full(tensors, path, *a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr(results, "save_file", full)
    code, _, err = _cli([*TRACE, "--out", tmp_path / "new" / "deeper" / "t"], capsys)
    _one_line(code, err, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, not even the folders it made


def test_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    code, _, err = _cli([*TRACE, "--out", ro / "t"], capsys)
    _one_line(code, err, "Read-only file system")
    code, _, err = _cli(["info", "--model", "tiny-gpt2", "--json", ro / "sub" / "info.json"], capsys)
    _one_line(code, err, "Read-only file system")
    code, _, err = _cli(["sweep", "--model", "tiny-gpt2", "--no-ray", "--workers", "1", "--layers", "0",
                         "--limit", "1", "--store", ro / "s.sqlite"], capsys)
    _one_line(code, err, "Read-only file system")
    assert list(ro.iterdir()) == []


def test_read_only_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    from knowscope.editing.grace import GRACEHyperParams
    from knowscope.facts import save_facts

    original = GRACEHyperParams.for_model.__func__
    monkeypatch.setattr(GRACEHyperParams, "for_model",
                        classmethod(lambda c, model, **kw: original(c, model, **{"n_iter": 2, **kw})))
    data = tmp_path / "facts.json"
    save_facts([Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico",
                     case_id=0)], data)
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    code, _, err = _cli(["edit", "--model", "tiny-llama", "--method", "grace", "--data", data, "--sequential",
                         "--no-fluency", "--probe", "0", "--run-dir", ro / "run"], capsys)
    _one_line(code, err, "Read-only file system")
    assert list(ro.iterdir()) == []


def test_unknown_sweep_hyperparameter_names_the_key_and_the_valid_ones(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    code, _, err = _cli(["sweep", "--model", "tiny-gpt2", "--no-ray", "--workers", "1", "--store", store,
                         "--hparams", '{"rome": {"nonsense": 1}}'], capsys)
    _one_line(code, err, "'nonsense'")
    assert "v_steps" in err and "layer" in err
    assert list(tmp_path.iterdir()) == []


def test_lens_on_a_hub_dataset_offline_fails_fast(capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    code, _, err = _cli(["lens", "--model", "tiny-llama", "--tuned", "--train", "--text", "hf:someone/corpus",
                         "--train-tokens", "64", "--steps", "1"], capsys)
    _one_line(code, err, "needs the internet")
    assert time.perf_counter() - started < 30


# --- 3: saved arrays carry a checksum ---------------------------------------------------------------------


def _flip_low_mantissa_bit(arrays: Path) -> None:
    raw = bytearray(arrays.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, header, data
    raw[start] ^= 1  # the lowest mantissa bit of the first little-endian float
    arrays.write_bytes(bytes(raw))


def test_a_changed_array_is_refused_and_old_results_still_load(tmp_path, tiny_gpt2):
    edit = _delta_edit(tiny_gpt2)
    edit.save(tmp_path / "e")
    body = json.loads((tmp_path / "e" / "meta.json").read_text())
    assert body["checksums"]["arrays.safetensors"].startswith("blake2b:")
    assert torch.equal(EditResult.load(tmp_path / "e").deltas[tiny_gpt2.arch.mlp_out_name(1)],
                       edit.deltas[tiny_gpt2.arch.mlp_out_name(1)])
    _flip_low_mantissa_bit(tmp_path / "e" / "arrays.safetensors")
    with pytest.raises(ResultFormatError, match="arrays do not match their checksum: the file was changed or "
                                                "corrupted"):
        EditResult.load(tmp_path / "e")
    # a result saved before checksums (no "checksums" in meta.json) still loads
    del body["checksums"]
    (tmp_path / "e" / "meta.json").write_text(json.dumps(body))
    assert EditResult.load(tmp_path / "e").method == "ft"


def test_a_changed_sequential_run_is_refused(tmp_path, tiny_llama):
    from knowscope.editing.grace import GRACEHyperParams
    from knowscope.editing.sequential import SequentialRun, load_run_edits, run_sequential

    facts = [Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico",
                  case_id=0),
             Fact(subject="Eiffel Tower", prompt="The {} is located in", target_true="Paris", target_new="Rome",
                  case_id=1)]
    hp = GRACEHyperParams.for_model(tiny_llama, n_iter=2)
    run_sequential(tiny_llama, facts, 1, tmp_path / "run", method="grace", hparams=hp)
    state = tmp_path / "run" / "state"
    assert len(load_run_edits(tmp_path / "run")) == 1 and SequentialRun.load(tmp_path / "run").records
    good_meta, good_arrays = (state / "meta.json").read_text(), (state / "arrays.safetensors").read_bytes()

    _flip_low_mantissa_bit(state / "arrays.safetensors")
    with pytest.raises(ResultFormatError, match="do not match their checksum"):
        load_run_edits(tmp_path / "run")
    with pytest.raises(ResultFormatError, match="do not match their checksum"):
        run_sequential(tiny_llama, facts, 1, tmp_path / "run", method="grace", hparams=hp)

    (state / "arrays.safetensors").write_bytes(good_arrays)
    body = json.loads(good_meta)
    body["data"]["records"][-1]["batch"] += 1  # the records claim a batch the arrays do not hold
    (state / "meta.json").write_text(json.dumps(body))
    with pytest.raises(ResultFormatError, match="changed or corrupted"):
        load_run_edits(tmp_path / "run")
    with pytest.raises(ResultFormatError, match="changed or corrupted"):
        SequentialRun.load(tmp_path / "run")


# --- 4: a saved memory session loads in a fresh process ----------------------------------------------------

FRESH = """
import sys
import knowscope as ks
from knowscope.editing import EditSession
assert "knowscope.editing.grace" not in sys.modules
session = EditSession.load(ks.tiny_model("llama"), sys.argv[1])
print(session.memory.kind, session.memory.n_edits)
"""


def test_a_grace_session_loads_in_a_fresh_process(tmp_path, tiny_llama):
    from knowscope.editing.grace import GRACEHyperParams
    from knowscope.editing.grace import edit as grace_edit

    fact = Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico")
    session = EditSession(tiny_llama)
    session.apply(grace_edit(tiny_llama, [fact], hparams=GRACEHyperParams.for_model(tiny_llama, n_iter=2)))
    try:
        session.save(tmp_path / "run" / "session")
    finally:
        session.rollback()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KNOWSCOPE_SHAPE_CHECKS": "0"}
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "run" / "session")], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["grace", "1"]


def test_an_unknown_memory_kind_names_the_known_ones(tiny_llama):
    from knowscope.editing.memory import MemoryMismatchError, memory_for

    with pytest.raises(MemoryMismatchError, match="known: factkey, grace, wise"):
        memory_for(tiny_llama, {"kind": "nonsense", "layer": 1})


# --- 5: --data bundled everywhere; the Ray client ---------------------------------------------------------


def test_bundled_data_in_every_fact_command(tmp_path, capsys):
    out = tmp_path / "c.json"
    code, _, err = _cli(["circuit", "--model", "tiny-gpt2", "--data", "bundled", "--limit", "2", "--method", "eap",
                         "--corruption", "noise", "--max-edges-json", "3", "--json", out], capsys)
    assert code == 0, err
    assert len(json.loads(out.read_text())["edges"]) == 3
    code, _, err = _cli(["facts", "--model", "tiny-llama", "--data", "bundled:extended", "--limit", "2", "--json",
                         out], capsys)
    assert code == 0, err
    assert len(json.loads(out.read_text())["rows"]) == 2
    for command in ("circuit", "trace", "lens", "facts"):
        code, _, err = _cli([command, "--model", "tiny-gpt2", "--data", "bundled:nope"], capsys)
        _one_line(code, err, "valid: bundled:default")


def test_sweep_over_ray_client_without_it_is_one_line(tmp_path, capsys, monkeypatch):
    from knowscope.sweep import runner

    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "ray[client]" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(runner, "ray_client_installed", lambda: False)
    code, _, err = _cli(["sweep", "--model", "tiny-gpt2", "--address", "ray://127.0.0.1:9", "--limit", "1",
                         "--layers", "0", "--store", tmp_path / "s.sqlite"], capsys)
    _one_line(code, err, "pip install 'ray[client]'")
    assert list(tmp_path.iterdir()) == []


# --- 6: small refusals, each one line and nothing created -------------------------------------------------


def test_small_refusals_are_one_line_and_create_nothing(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_model = tmp_path / "no-model"  # these refusals come before the model is loaded
    cases = [
        (["circuit", "--model", "tiny-gpt2", "--max-edges-json", "-1"], "--max-edges-json must be >= 0"),
        (["sweep", "--model", "tiny-gpt2", "--no-ray", "--workers", "1", "--max-minutes", "-1", "--store",
          tmp_path / "s.sqlite"], "--max-minutes must be >= 0"),
        (["trace", "--model", no_model, "--data", "bundled", "--locate-window", "0"], "--locate-window must be >= 1"),
        (["lens", "--model", no_model, "--prompt", "The capital of France is", "--target", ""], "--target is empty"),
        (["view", tmp_path / "no-runs"], "does not exist"),
        (["lens", "--model", no_model, "--prompt", "x", "--save", a_file], "with a folder of results"),
        (["detox", "--model", no_model, "--judge", empty], "no config.json"),
    ]
    for argv, needle in cases:
        code, _, err = _cli(argv, capsys)
        _one_line(code, err, needle)
        assert "None" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty"]
    with pytest.raises(SaveRefusedError) as info:
        check_writable(a_file, None)
    assert "None" not in str(info.value)


def test_locate_window_larger_than_the_model_is_refused_before_tracing(capsys):
    code, _, err = _cli(["trace", "--model", "tiny-gpt2", "--data", "bundled", "--limit", "1", "--locate-window",
                         "9"], capsys)
    _one_line(code, err, "has 4 layers")


def test_an_edit_that_changes_nothing_is_refused_with_the_fact_named(tiny_gpt2):
    from knowscope.editing import ft, rome

    same = Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new=" Japan")
    for editor in (rome, ft):
        with pytest.raises(ValueError, match="'Tokyo is the capital of'.*is the true one"):
            editor.edit(tiny_gpt2, [same], layers=1)


def test_the_judge_loader_takes_safetensors_only(tmp_path):
    from knowscope.models import ModelLoadError
    from knowscope.safety.judge import get_judge

    pickled = tmp_path / "judge"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        get_judge(str(pickled))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        get_judge(str(tmp_path / "empty"))


def test_save_dir_leaves_no_folder_behind_when_the_disk_is_full(tmp_path, monkeypatch):
    def full(tensors, path, *a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(results, "save_file", full)
    with pytest.raises(OSError) as info:
        save_dir(tmp_path / "a" / "b", "trace", {}, {"x": torch.ones(2)})
    assert info.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
