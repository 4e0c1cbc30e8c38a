"""End to end: ``knowscope demo`` saves its runs, ``knowscope view`` serves them on localhost, and
headless Chromium (Debian's ``chromium``, driven by Playwright) opens every page.

It checks that the demo's trace, circuit and edit open from disk (the page draws them with no live
computation); on the Circuit explorer it clicks a node of the graph to pin it and reads its detail,
and moves the size control to a size the circuit did not save and reads the faithfulness measured
for it, then starts a live circuit search (its time estimated first) and cancels it; it applies a ROME
edit in the Edit lab (whose layer mode starts at ``auto``) and sees the Causal trace and Probes pages
read the edited model (before | after: the model's answer changed); a DINM edit's responses fit the
page (no sideways scrolling) and its over-refusal shows; a WISE edit warns exactly when its router
sends neighbours to the memory; no page shows a byte-level BPE marker (Ġ, Ċ, Â). It saves a screenshot of each page: to
``$KNOWSCOPE_SCREENSHOTS`` when set (``make screenshots`` writes the README's ``docs/screenshots``),
else to the test's temporary folder.
``KNOWSCOPE_DEMO_RUNS=DIR`` reuses runs an earlier ``knowscope demo --out DIR/demo`` saved.
CI sets ``KNOWSCOPE_REQUIRE_BROWSER=1`` so that a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("KNOWSCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _browser_or_skip() -> None:
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"Chromium ({CHROMIUM}; Debian package 'chromium')")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package 'playwright'")
    if missing:
        msg = "the browser test needs " + " and ".join(missing)
        if os.environ.get("KNOWSCOPE_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The demo's saved runs (small settings), made by the real command."""
    from knowscope.cli import main

    if os.environ.get("KNOWSCOPE_DEMO_RUNS"):  # runs saved by an earlier `knowscope demo --out DIR/demo`
        return Path(os.environ["KNOWSCOPE_DEMO_RUNS"])
    out = tmp_path_factory.mktemp("runs") / "demo"
    code = main(["demo", "--out", str(out), "--facts", "2", "--samples", "2", "--locate-facts", "3",
                 "--circuit-facts", "2"])
    assert code == 0
    return out.parent


@pytest.fixture(scope="module")
def viewer(demo_runs, tmp_path_factory):
    _browser_or_skip()
    port = _free_port()
    exe = Path(sys.executable).with_name("knowscope")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from knowscope.cli import main; main()"]
    log_path = tmp_path_factory.mktemp("viewer") / "viewer.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*cmd, "view", str(demo_runs), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the viewer did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()  # `knowscope view` execs streamlit, so this stops the server itself
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        assert proc.returncode is not None


@pytest.fixture(scope="module")
def browser_page(viewer, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 2400})
        page.set_default_timeout(240_000)
        page.goto(viewer)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    target = os.environ.get("KNOWSCOPE_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def shot(page, path: Path) -> None:
    """A full-page screenshot, stored as an optimised palette PNG (a few hundred KB, not megabytes)."""
    import io

    data = page.screenshot(full_page=True)
    try:
        from PIL import Image
    except ImportError:
        path.write_bytes(data)
        return
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def running(page) -> bool:
    """Streamlit shows a status widget with a Stop button while the script runs."""
    return page.locator('[data-testid="stStatusWidget"]').count() > 0 or \
        page.get_by_role("button", name="Stop").count() > 0


def shows(page, text: str | re.Pattern[str]) -> None:
    """Wait until ``text`` shows; when it never does, fail with what the page showed instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text).first.wait_for()
    except PlaywrightTimeout:
        main = page.locator('[data-testid="stMain"]').inner_text()
        raise AssertionError(f"{text!r} never showed; the page ends with:\n...{main[-1500:]}") from None


def press(page, button: str, until: str) -> None:
    """Click ``button``, wait until ``until`` shows and Streamlit is idle; no error, nothing cut off."""
    page.get_by_role("button", name=button).click()
    shows(page, until)
    settle(page)
    no_error(page)
    readable(page)


def settle(page, quiet_ms: int = 2000, timeout_s: float = 600) -> None:
    """Wait until Streamlit has been idle (no running script) for ``quiet_ms``."""
    deadline = time.time() + timeout_s
    quiet = 0
    while quiet < quiet_ms:
        assert time.time() < deadline, "the page kept running"
        quiet = 0 if running(page) else quiet + 250
        page.wait_for_timeout(250)


def go(page, name: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
    settle(page)


def no_error(page) -> None:
    errors = page.locator('[data-testid="stAlertContentError"], [data-testid="stException"]')
    assert errors.count() == 0, errors.all_inner_texts()


def heatmaps(page) -> int:
    return page.locator(".js-plotly-plot .heatmaplayer image, .js-plotly-plot .hm image").count()


def pick(page, label: str, option_text: str) -> None:
    """Choose the option containing ``option_text`` in the selectbox labelled ``label``."""
    page.get_by_role("combobox", name=label).click()
    page.wait_for_timeout(300)
    option = page.get_by_role("option").filter(has_text=option_text).first
    if option.count() == 0:  # a long list renders only what is in view: type to filter it
        page.keyboard.type(option_text)
        page.wait_for_timeout(300)
    option.click()
    settle(page)


BPE_MARKERS = ("Ġ", "Ċ", "Â")


def readable(page) -> None:
    """No byte-level BPE piece markers in the page's text (tokens are decoded, spaces shown as ␣)."""
    text = page.locator('[data-testid="stMain"]').inner_text() + page.locator('[data-testid="stSidebar"]').inner_text()
    bad = [m for m in BPE_MARKERS if m in text]
    assert not bad, f"BPE markers {bad} in the page: ...{text[max(0, text.find(bad[0]) - 80):][:200]}..."


def metric_values(page, label: str) -> list[str]:
    """The values of the metrics labelled ``label``, in page order."""
    out = []
    for m in page.locator('[data-testid="stMetric"]').all():
        if m.locator('[data-testid="stMetricLabel"]').inner_text().strip() == label:
            out.append(m.locator('[data-testid="stMetricValue"]').inner_text().strip())
    return out


def test_viewer_in_chromium(browser_page, shots, demo_runs):
    page = browser_page
    settle(page)
    no_error(page)
    # Runs: the demo's results listed and opened from disk
    body = page.locator('[data-testid="stMain"]')
    assert body.get_by_text("Runs", exact=True).count() >= 1
    for kind in ("circuit", "edit_session", "trace"):
        pick(page, "open a run", f"[{kind}]")
        no_error(page)
        assert page.locator(".js-plotly-plot").count() >= 1
        if kind == "edit_session":
            shot(page, shots / "runs_edit.png")
    assert heatmaps(page) >= 1  # the saved trace's heatmaps, drawn without tracing
    shot(page, shots / "runs.png")

    readable(page)

    # Circuit explorer: the demo's circuit; click a node to pin it, move the size control
    go(page, "Circuit explorer")
    no_error(page)
    readable(page)
    assert page.locator(".js-plotly-plot").count() >= 2  # graph + faithfulness curve
    title = page.locator(".js-plotly-plot").first.locator(".gtitle").text_content()
    drawn, kept = title.split(" circuit edges drawn")[0].split(" of ")
    assert drawn == kept  # every edge of the circuit drawn
    saved_faith = metric_values(page, "faithfulness")[0]
    float(saved_faith)
    nodes = page.locator(".js-plotly-plot").first.locator(".scatterlayer .trace").last.locator("path.point")
    assert nodes.count() >= 3
    box = nodes.nth(2).bounding_box()  # input is first; then the circuit's heads and MLPs
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    shows(page, "Pinned: ")
    settle(page)
    no_error(page)
    pinned = page.get_by_text("Pinned: ").first.inner_text().split("Pinned: ")[1].split()[0]
    assert page.get_by_text("edges in", exact=True).count() == 1
    press(page, f"Attention and unembedding of {pinned}", until=f"role of {pinned}")
    shot(page, shots / "circuit.png")
    slider = page.get_by_role("slider").first
    slider.focus()
    page.keyboard.press("ArrowRight")  # the next size: one of the saved curve's
    page.keyboard.press("ArrowRight")  # then one on the 1-2-5 ladder that the circuit did not save
    page.wait_for_timeout(3000)
    settle(page)
    no_error(page)
    shows(page, "measured now by exact edge patching")
    resized = metric_values(page, "faithfulness")[0]
    assert resized != "not measured" and -5 < float(resized) < 5

    # a live circuit search: estimated before it starts, cancelled while it runs, nothing kept
    page.get_by_text("compute one", exact=True).click()
    settle(page)
    n_facts = page.get_by_role("spinbutton", name="facts")
    n_facts.fill("8")  # the most the page allows: a search long enough to be cancelled while it runs
    n_facts.press("Enter")
    settle(page)
    assert page.get_by_text("Estimated time: about").count() >= 1
    page.get_by_role("button", name="Find the circuit").click()
    cancel = page.get_by_role("button", name="Cancel: stop the circuit search")
    cancel.wait_for()
    # progress between units; Streamlit sends only the newest state of the bar, so any unit's count will do
    shows(page, re.compile(r"Circuit search: \d+ of \d+ passes"))
    cancel.click()
    shows(page, "Circuit search cancelled")
    settle(page)
    no_error(page)
    assert page.get_by_text("circuit edges drawn").count() == 0  # no half-computed circuit
    shot(page, shots / "circuit_cancelled.png")

    # Edit lab: a ROME edit at layer 5 of the Eiffel Tower fact, from the page
    go(page, "Edit lab")
    pick(page, "fact", "The Eiffel Tower")
    assert page.get_by_role("radio", name="auto").is_checked()  # the sweep-measured layer, as the docs advise
    assert page.get_by_text("auto: layer 1, the best of a 40-fact layer sweep of ROME").count() == 1
    page.get_by_text("choose", exact=True).click()
    settle(page)
    press(page, "Apply ROME", until="This tab's edits: 1")
    assert page.get_by_text("ROME at layer 5: The Eiffel Tower: Paris → London").count() >= 1
    assert page.locator(".js-plotly-plot").count() >= 2  # metrics + activation shift
    shot(page, shots / "edit_lab.png")

    # Causal trace: the same fact traced before | after on the edited model
    go(page, "Causal trace")
    no_error(page)
    pick(page, "fact", "The Eiffel Tower")
    samples = page.get_by_role("spinbutton", name="noise samples")
    samples.fill("2")  # two traces (before, after): fewer samples keep the test short
    samples.press("Enter")
    settle(page)
    press(page, "Run trace", until="after: edited")
    assert heatmaps(page) >= 6  # hidden, MLP, attention, before and after
    before, after = metric_values(page, "model's next token")
    assert before == "␣Paris" and after == "␣London", (before, after)
    shot(page, shots / "trace.png")
    assert (shots / "trace.png").stat().st_size > 10_000

    # Probes: the logit lens of the fact's prompt, before | after
    go(page, "Probes")
    prompt = page.get_by_role("textbox", name="prompt", exact=True)
    prompt.fill("The Eiffel Tower can be found in the city of")  # the edited prompt
    prompt.press("Enter")
    settle(page)
    press(page, "Run the lens", until="after: edited")
    answers = metric_values(page, "logit lens: the model's answer")
    assert answers == ["␣Paris", "␣London"], answers
    assert len(metric_values(page, "best logistic")) == 1  # the demo's linear probe, saved under its runs
    shot(page, shots / "probes.png")

    # the sidebar's switch takes every page back to the unedited model
    page.locator('[data-testid="stSidebar"]').get_by_text("unedited", exact=True).click()
    settle(page)
    no_error(page)

    go(page, "Sweeps")
    no_error(page)
    readable(page)
    cells = metric_values(page, "cells")  # the demo's own small sweep: every cell stored
    assert len(cells) == 1 and cells[0].split(" of ")[0] == cells[0].split(" of ")[1], cells
    shot(page, shots / "sweeps.png")

    # DINM in the lab: every response readable without scrolling sideways, before above after
    go(page, "Edit lab")
    page.get_by_text("a safety item (DINM)", exact=True).click()
    settle(page)
    tokens = page.get_by_role("spinbutton", name="response tokens (DINM)")
    if not (tokens.count() and tokens.is_visible()):  # the settings are in a closed expander
        page.get_by_text("settings", exact=True).click()
        tokens.wait_for()
    tokens.fill("16")
    tokens.press("Enter")
    settle(page)
    press(page, "Apply DINM", until="This tab's edits: 2")
    (refused,) = metric_values(page, "over-refusal")  # the harmless prompts refused after the edit
    assert refused.endswith("%")
    assert page.get_by_text("harmless prompts refused, by category").count() == 1
    width = page.viewport_size["width"]
    codes = page.locator('[data-testid="stMain"] [data-testid="stCode"]')
    assert codes.count() == 10  # five inputs, before and after
    for i in range(codes.count()):
        box = codes.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (i, box, width)
        assert codes.nth(i).locator("pre").evaluate("e => e.scrollWidth <= e.clientWidth + 1"), i
    shot(page, shots / "edit_lab_dinm.png")

    # WISE on the unedited model: the router's share of neighbours, and a warning when any routes
    page.get_by_role("button", name="Undo the last edit").click()
    settle(page)
    page.get_by_role("button", name="Undo the last edit").click()
    shows(page, "This tab's edits: 0")
    settle(page)
    page.get_by_text("a fact (ROME / MEMIT / FT / FactKey / GRACE / WISE)", exact=True).click()
    settle(page)
    page.get_by_text("WISE", exact=True).click()
    settle(page)
    page.get_by_role("radiogroup", name="layer").get_by_text("auto", exact=True).click()
    settle(page)
    press(page, "Apply WISE", until="This tab's edits: 1")
    routing = page.get_by_text("routed to the side memory").first.inner_text()
    share = float(routing.split("neighborhood ")[1].split("%")[0])
    warned = page.get_by_text("Router warning:").count()
    assert (share > 0) == (warned > 0), (routing, warned)
    shot(page, shots / "edit_lab_wise.png")
