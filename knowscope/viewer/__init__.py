"""knowscope.viewer: a Streamlit explorer of saved and live traces, circuits, edits and probes.

``knowscope view [RUNS_DIR] [--port P] [--address A] [--model M]`` starts it (on localhost unless
``--address`` says otherwise; Streamlit's toolbar is in its "viewer" mode: no Deploy button). Pages: Runs (every
result saved under the runs folder, opened from disk), Causal trace, Circuit explorer, Edit lab,
Probes. The viewer computes nothing of its own: it calls :mod:`knowscope.circuits`,
:mod:`knowscope.editing` and :mod:`knowscope.probes` and draws their results' ``figure()``. The
model it loads for live work is shared by all tabs and never left edited
(:mod:`knowscope.viewer.lab`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def command(runs_dir: str | os.PathLike[str] = "runs", port: int = 8501, headless: bool = True,
            address: str = "localhost") -> list[str]:
    """The ``streamlit run`` command line that serves the viewer (on ``address``; ``0.0.0.0``: every
    interface, for a viewer on a remote machine)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
            "--server.address", address, "--server.headless", "true" if headless else "false",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer"]


def environment(runs_dir: str | os.PathLike[str] = "runs", model: str | None = None) -> dict[str, str]:
    """The process environment the viewer reads its settings from."""
    env = dict(os.environ)
    env["KNOWSCOPE_RUNS"] = str(Path(runs_dir).resolve())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"  # no usage statistics to any outside host
    if model:
        env["KNOWSCOPE_MODEL"] = model
    else:
        env.pop("KNOWSCOPE_MODEL", None)
    return env


def serve(runs_dir: str | os.PathLike[str] = "runs", port: int = 8501, model: str | None = None,
          headless: bool = True, replace_process: bool = False, address: str = "localhost") -> int:
    """Run the viewer in the foreground until it stops; returns streamlit's exit status.

    ``replace_process=True`` (the CLI) execs streamlit in place of this process, so that stopping
    ``knowscope view`` (Ctrl-C, SIGTERM) stops the server itself and leaves no orphan behind.
    Otherwise streamlit runs as a child that is terminated when this call ends, however it ends.
    """
    cmd, env = command(runs_dir, port, headless, address), environment(runs_dir, model)
    if replace_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
