"""``knowscope view``: open the Streamlit explorer on a runs folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "view"
HELP = "open the Streamlit explorer of traces, circuits, edits and probes (on localhost, or --address)"
ORDER = 90
TAKES_JSON = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="?", default="runs", help="folder of saved runs (default: runs)")
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    parser.add_argument("--address", default="localhost",
                        help="address to serve on (default localhost; 0.0.0.0: every interface, e.g. a remote "
                             "machine reached through its own network; anyone who reaches it can use the viewer)")
    parser.add_argument("--model", default=None, help="model for live computations (default: smollm2-135m)")
    parser.add_argument("--browser", action="store_true", help="open a browser window as well")


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    from knowscope.commands import CLIError
    from knowscope.viewer import serve

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    runs = Path(args.runs)
    if not runs.exists():
        raise CLIError(f"runs folder {runs} does not exist; save runs there first (`knowscope demo` writes "
                       "runs/demo), or give the folder that holds them")
    if not runs.is_dir():
        raise CLIError(f"{runs} is a file, not a runs folder")
    if not args.address.strip() or any(c.isspace() for c in args.address):
        raise CLIError(f"--address must be a host name or IP address, got {args.address!r}")
    shown = "localhost" if args.address in ("0.0.0.0", "::") else args.address
    print(f"knowscope viewer on http://{shown}:{args.port}  (serving on {args.address}; runs: {runs.resolve()}; "
          "Ctrl-C stops it)", flush=True)
    code = serve(runs, args.port, args.model, headless=not args.browser, replace_process=True, address=args.address)
    if code not in (0, -2, 130):
        raise CLIError(f"streamlit exited with status {code}")
    return None
