"""Running ``knowscope`` in-process in the CLI tests: ``(exit code, stdout, stderr)``."""

from __future__ import annotations

from knowscope.cli import main


def run_cli(argv, capsys):
    """``knowscope ARGV`` (each item as text) through the CLI's ``main``, with what it printed (``capsys``:
    pytest's fixture)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
