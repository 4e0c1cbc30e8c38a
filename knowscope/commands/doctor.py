"""``knowscope doctor``: is this install sound? Versions, cache, and a seconds-long self-check.

Prints the versions in use and the cache's location and size, then checks on a tiny random Llama
(rotary, grouped-query attention - the harder of the two architectures) that

* the KV cache reaches attention (cached greedy decoding == uncached; :mod:`knowscope.compat`),
* the fast causal trace equals the per-cell reference loop (and which partial-forward mode runs),
* a ROME edit applies (the weights change) and undoes bit for bit.

It ends with one line: ``ok``, or what is wrong and the command that fixes it; the exit status is 0
only for ``ok``. Run it after an upgrade, or when a number looks off.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

NAME = "doctor"
HELP = "check this install: versions, cache, and a self-check on a tiny model (fast trace, KV cache, edit/undo)"
ORDER = 5

PACKAGES = ("torch", "transformers", "transformer-lens", "streamlit", "tokenizers", "safetensors", "numpy")
FIX = "make setup (or: pip install -r requirements.lock), then run knowscope doctor again"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-llama",
                        help="model for the self-check (default: tiny-llama, seconds; any name load_model takes)")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return total


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else ''}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    out.update({name: _version(name) for name in PACKAGES})
    out["knowscope"] = _version("knowscope")
    return out


def self_check(model: Any) -> list[dict[str, Any]]:
    """The checks on ``model``; each is ``{"check", "ok", "detail"}`` (never raises)."""
    import torch

    from knowscope.circuits.tracing import trace
    from knowscope.editing import EditSession, rome
    from knowscope.editing.hparams import ROMEHyperParams
    from knowscope.facts import Fact

    checks: list[dict[str, Any]] = []

    def run(name: str, fn) -> None:
        started = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as exc:  # noqa: BLE001 - a doctor reports every failure as a finding
            ok, detail = False, _one_line(exc)
        checks.append({"check": name, "ok": bool(ok), "detail": detail,
                       "seconds": round(time.perf_counter() - started, 2)})

    def kv_cache() -> tuple[bool, str]:
        c = model.compat
        how = "via knowscope's cache bridge" if c.cache_bridge else "natively"
        if not c.kv_cache:
            return False, ("the KV cache does not reach attention: generation runs uncached (slow) "
                           f"[{'; '.join(c.notes)}]")
        return True, f"cached == uncached decoding (max |dlogit| {c.probe_diff:.2g}), {how}"

    prompt, subject = "Lionel Messi plays soccer in", "Lionel Messi"

    def fast_trace() -> tuple[bool, str]:
        kw = dict(samples=2, window=2, seed=0, kinds=("hidden", "mlp", "attn"))
        fast = trace(model, prompt, subject, method="fast", **kw)
        ref = trace(model, prompt, subject, method="reference", **kw)
        diff = max(float((fast.scores[k] - ref.scores[k]).nan_to_num().abs().max()) for k in fast.scores)
        mode = model.compat.trace_mode
        if diff > 1e-5:
            return False, f"fast trace differs from the reference loop by {diff:.3g} (mode {mode})"
        speed = "" if mode == "suffix" else " (the KV-cache mode did not reproduce the bridge; slower cache-free mode)"
        return True, f"fast == reference (max diff {diff:.1g}), mode {mode}{speed}"

    def edit_undo() -> tuple[bool, str]:
        fact = Fact(subject=subject, prompt="{} plays the sport of", target_true="soccer", target_new="tennis")
        layer = min(1, model.arch.n_layers - 1)
        hp = ROMEHyperParams(layer=layer, v_steps=4, context_lengths=((4, 2),), stats_tokens=256)
        params = model.named_parameters()
        before = {n: p.detach().clone() for n, p in params.items()}
        result = rome.edit(model, [fact], layers=layer, hparams=hp)
        session = EditSession(model)
        target = model.encode_target(" tennis")[0]
        p0 = float(model.next_token_probs(fact.text)[target])
        session.apply(result)
        p1 = float(model.next_token_probs(fact.text)[target])
        changed = [n for n, p in params.items() if not torch.equal(p, before[n])]
        session.undo()
        restored = all(torch.equal(p, before[n]) for n, p in params.items())
        if not changed or not restored:
            return False, f"edit changed {len(changed)} parameters; weights restored bit for bit: {restored}"
        return True, f"ROME changed {', '.join(changed)}; P(new) {p0:.3g} -> {p1:.3g}; undo restored every weight"

    run("kv_cache", kv_cache)
    run("fast_trace", fast_trace)
    run("edit_undo", edit_undo)
    return checks


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.models import cache_dir, load_model

    vers = versions()
    for name, v in vers.items():
        print(f"{name:<18}{v}")
    cache = cache_dir()
    size = _folder_size(cache)
    print(f"{'cache':<18}{cache} ({size / 2**20:.1f} MiB)")
    started = time.perf_counter()
    try:
        model = load_model(args.model, device="cpu")
        checks = self_check(model)
    except Exception as exc:  # noqa: BLE001 - the model itself would not load
        checks = [{"check": "load_model", "ok": False,
                   "detail": _one_line(exc)}]
    for c in checks:
        print(f"{'ok' if c['ok'] else 'FAIL':<5}{c['check']:<12}{c['detail']}")
    failed = [c for c in checks if not c["ok"]]
    verdict = "ok" if not failed else f"{failed[0]['check']}: {failed[0]['detail']}. Fix: {FIX}"
    print(verdict)
    result = {"versions": vers, "cache": str(cache), "cache_bytes": size, "checks": checks,
              "seconds": round(time.perf_counter() - started, 2), "ok": not failed, "verdict": verdict}
    if failed:
        args.exit_status = 1  # knowscope.cli returns it after writing --json
    return result

