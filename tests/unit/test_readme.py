"""The README is a user's guide that cannot rot: every shell command and Python block in it runs.

Blocks run as written, in order, the Python ones in one namespace (a later block uses the model an
earlier one loaded), in a temporary folder. A block preceded by ``<!-- needs-default-model -->``
(it loads SmolLM2: the integration tests and notebooks cover it) or ``<!-- not-run: reason -->`` is
skipped; the markers sit in the README's source, visible to its editors. The tests assert that
runnable blocks exist, so they cannot pass by skipping everything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import knowscope

REPO = Path(knowscope.__file__).resolve().parent.parent
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(needs-default-model|not-run:[^>]*)\s*-->$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # where the fence opens (1-based)
    skip: str | None  # the marker's text, or None when the block runs


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks with their language and the marker on the nearest non-blank line above."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        start = i
        above = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        blocks.append(Block(m.group(1), "\n".join(body) + "\n", start + 1, marker.group(1) if marker else None))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _runnable(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang and b.skip is None]


def test_the_readme_stays_a_guide():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text  # CI greps for the two commands
    for shot in re.findall(r"\((docs/screenshots/[^)]+)\)", text):
        assert (REPO / shot).is_file(), shot
    for doc in re.findall(r"\]\((docs/[\w.]+\.md)", text):
        assert (REPO / doc).is_file(), doc


def test_the_parser_finds_blocks_and_markers():
    text = "a\n\n<!-- needs-default-model -->\n```python\nx = 1\n```\n\n```bash\necho hi\n```\n"
    got = readme_blocks(text)
    assert [(b.lang, b.code, b.skip) for b in got] == [("python", "x = 1\n", "needs-default-model"),
                                                       ("bash", "echo hi\n", None)]
    assert all(b.lang in ("python", "bash") for b in BLOCKS), {b.lang for b in BLOCKS}
    assert any(b.skip == "needs-default-model" for b in BLOCKS)


def test_every_python_block_that_needs_no_more_than_a_tiny_model_runs(tmp_path, monkeypatch):
    blocks = _runnable("python")
    assert len(blocks) > 0
    assert "tiny" in blocks[0].code  # the first runnable block loads a tiny model, not the default one
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in blocks:
        try:
            exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # noqa: BLE001 - name the block that broke
            pytest.fail(f"README.md block at line {block.line} raised {type(exc).__name__}: {exc}")


def test_every_shell_command_that_needs_no_more_than_a_tiny_model_runs(tmp_path):
    blocks = _runnable("bash")
    assert len(blocks) > 0
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for block in blocks:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"README.md block at line {block.line}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
