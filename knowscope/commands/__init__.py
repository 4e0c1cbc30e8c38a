"""One module per ``knowscope`` subcommand (see :mod:`knowscope.cli` for the protocol)."""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """An expected failure to report on one line (bad input, missing file, ...); the CLI prints it, exit 2."""


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--model`` / ``--device`` options every model-using subcommand shares."""
    parser.add_argument("--model", default=None, help="model name or local HF directory (default: smollm2-135m)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def stage(text: str) -> None:
    """One line on stdout before a stage of a command that can take a while, so that no long run is silent.

    Bars (tqdm, on stderr) show progress inside a stage where the library has one; this line says which
    stage is running and why it may take time.
    """
    print(f"... {text}", flush=True)


def bars() -> bool:
    """Whether a command shows the library's progress bars: on a terminal. A log or a captured stderr gets
    the :func:`stage` lines only, and an error there stays one line."""
    return sys.stderr.isatty()


def load_from_args(args: argparse.Namespace):
    from knowscope.models import load_model

    return load_model(args.model, device=args.device)
