"""``knowscope shift``: how far a saved edit moves each layer's activations on prompts.

``--edit DIR`` is an :class:`~knowscope.editing.EditResult` or an ``EditSession`` directory (what
``knowscope edit --save`` / ``knowscope detox --save`` write). Before = the unedited model, after =
with the edit applied; the model is restored afterwards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from knowscope.commands import add_model_argument, load_from_args

NAME = "shift"
HELP = "activation shift of a saved edit: per layer, residual / MLP / attention change on prompts"
ORDER = 85


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--edit", required=True, help="a saved EditResult or EditSession directory")
    parser.add_argument("--prompts", required=True,
                        help="a text file (one prompt per line) or a JSON list of strings")
    parser.add_argument("--save", metavar="DIR", default=None, help="save the ActivationShift to DIR")


def read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no prompts file at {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ValueError(f"{p} must hold a JSON list of strings")
        prompts = data
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [x for x in prompts if x.strip()]
    if not prompts:
        raise ValueError(f"{p} holds no prompts")
    return prompts


def run(args: argparse.Namespace) -> dict[str, Any]:
    from knowscope.editing.session import EditResult, EditSession
    from knowscope.probes.shift import activation_shift
    from knowscope.results import result_kind

    prompts = read_prompts(args.prompts)
    kind = result_kind(args.edit)
    if not Path(args.edit).exists():
        raise ValueError(f"--edit {args.edit}: does not exist; give the folder `knowscope edit --save` or "
                         "`knowscope detox --save` wrote (e.g. DIR/edits/0000 or DIR/session)")
    if kind is None:
        raise ValueError(f"--edit {args.edit}: is not a knowscope result folder (no readable meta.json); give a saved "
                         "edit or edit session")
    if kind not in ("edit", "edit_session"):
        raise ValueError(f"--edit {args.edit}: holds a {kind!r} result, not an edit; give a saved edit or edit session")
    model = load_from_args(args)
    if kind == "edit_session":
        session = EditSession.load(model, args.edit)
        shift = activation_shift(session, prompts)
        session.rollback()
    else:
        session = EditSession(model)
        shift = activation_shift(session, prompts, EditResult.load(args.edit))
    summary = shift.summary()
    print(f"activation shift on {model.name}, {len(prompts)} prompts ({shift.meta.get('edit')})")
    print(f"{'layer':>5} {'resid rel':>10} {'mlp rel':>9} {'attn rel':>9} {'resid cos':>10}")
    for layer in range(model.arch.n_layers):
        print(f"{layer:>5} {summary['resid']['relative'][layer]:>10.4f} {summary['mlp']['relative'][layer]:>9.4f} "
              f"{summary['attn']['relative'][layer]:>9.4f} {summary['resid']['cosine'][layer]:>10.4f}")
    print("layers that moved most (residual):", summary["resid"]["top_layers"])
    out = {"model": model.name, "fingerprint": model.fingerprint, "edit": args.edit, "prompts": prompts,
           "meta": shift.meta, "by_layer": summary}
    if args.save:
        out["saved"] = str(shift.save(args.save))
    return out
