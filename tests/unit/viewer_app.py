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


def apply_dinm(at, layer: int = 2, tokens: int = 6, mode: str = "choose"):
    """In the Edit lab, apply DINM to the first safety item in layer ``mode`` (``"choose"``: at ``layer``)
    with ``tokens``-token responses."""
    page(at, "Edit lab")
    at.radio(key="lab_target").set_value("a safety item (DINM)").run()
    at.radio(key="lab_layer_mode").set_value(mode).run()
    if mode == "choose":
        at.number_input(key="lab_layer").set_value(layer).run()
    at.number_input(key="lab_tokens").set_value(tokens).run()
    at.button(key="lab_apply").click().run()
    return at


def save_lab(at, name: str):
    """In the Edit lab, save the tab's first edit and what was measured under ``name``."""
    at.text_input(key="lab_save_name-1").set_value(name).run()
    at.button(key="lab_save").click().run()
    return at
