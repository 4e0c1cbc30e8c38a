"""``knowscope`` command line: thin wrappers over the Python API.

Each subcommand lives in a module of :mod:`knowscope.commands` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict | None``. ``run`` returns the JSON-able result;
this module prints nothing of its own but errors, and writes the result to ``--json FILE`` when
asked. Expected failures (missing model, unknown name, a file in the wrong format, bad values, a
full disk or a read-only folder when saving) print one line on stderr and exit with status 2, never
a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

from knowscope import commands
from knowscope.commands import CLIError

logger = logging.getLogger("knowscope")


SAVE_DESTS = ("out", "save")  # options naming a folder a command saves results to


def _precheck(args: argparse.Namespace) -> None:
    """Refuse bad output paths before any computation (one line, exit 2)."""
    from pathlib import Path

    from knowscope.results import check_writable, nearest_existing

    target = getattr(args, "json", None)
    if target:
        p = Path(target)
        if p.is_dir():
            raise CLIError(f"--json {target}: is a folder; give a file name")
        parent = nearest_existing(p.parent)
        if not parent.is_dir():
            raise CLIError(f"--json {target}: {parent} is a file, not a folder")
    if getattr(args, "_checks_own_output", False):
        return  # the command checks its save folder itself (the demo replaces its own earlier output)
    for dest in SAVE_DESTS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value:
            check_writable(value, None, bool(getattr(args, "overwrite", False)))


def _command_modules() -> list[Any]:
    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"knowscope.commands.{info.name}"))
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knowscope",
        description="Locate knowledge inside a language model and edit it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        if getattr(mod, "TAKES_JSON", True):
            p.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE")
        if any(a.dest in SAVE_DESTS for a in p._actions):
            p.add_argument("--overwrite", action="store_true",
                           help="allow replacing a knowscope result of another kind at the save path (a folder "
                                "with files knowscope did not write is never replaced)")
        p.set_defaults(_run=mod.run, _checks_own_output=getattr(mod, "CHECKS_OWN_OUTPUT", False))
    return parser


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error (a full disk, a read-only folder, ...), naming the path."""
    what = exc.strerror or str(exc)
    where = f" {exc.filename}" if exc.filename else ""
    full = "free some space or choose another folder; nothing was saved there"
    verb, hint = {errno.ENOSPC: ("cannot write", full), errno.EDQUOT: ("cannot write", full),
                  errno.EROFS: ("cannot write", "choose another folder; nothing was saved there"),
                  errno.EACCES: ("cannot access", "no permission"),
                  errno.EPERM: ("cannot access", "no permission")}.get(exc.errno or 0, ("", ""))
    if not verb:
        return f"{what}:{where}" if where else what
    return f"{verb}{where}: {what} ({hint})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from safetensors import SafetensorError

    from knowscope.facts import FactFormatError, write_json_atomic
    from knowscope.models import ModelLoadError
    from knowscope.results import ResultFormatError, allow_overwrite, made_parents

    expected = (CLIError, ModelLoadError, FactFormatError, ResultFormatError, FileNotFoundError, ValueError, KeyError,
                UnicodeDecodeError, IsADirectoryError, NotADirectoryError)
    try:
        _precheck(args)
        with allow_overwrite(bool(getattr(args, "overwrite", False))):
            result = args._run(args)
        if getattr(args, "json", None) and result is not None:
            with made_parents(args.json):
                write_json_atomic(args.json, result)
            print(f"wrote {args.json}")
    except expected as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"knowscope {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except OSError as exc:  # a full disk, a read-only folder, ...: the saves left nothing half-written
        print(f"knowscope {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except SafetensorError as exc:  # a weights file written or read outside knowscope.results (HF conversions)
        print(f"knowscope {args.command}: error: a safetensors file could not be read or written ({exc})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"knowscope {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(getattr(args, "exit_status", 0))  # a command that ran but found a problem (doctor) sets 1


if __name__ == "__main__":
    sys.exit(main())
