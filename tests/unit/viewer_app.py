"""Helpers the viewer's app tests share (Streamlit's AppTest on a tiny model)."""

from __future__ import annotations

from pathlib import Path

APP = str(Path(__file__).resolve().parents[2] / "knowscope" / "viewer" / "app.py")


def page(at, name):
    """Switch the app to page ``name`` and rerun it."""
    at.sidebar.radio(key="page").set_value(name).run()
    return at


def ok(at):
    """No exception and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
