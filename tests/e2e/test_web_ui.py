"""The web UI in a real browser: Debian's chromium, headless, driven by Playwright, against a real
`sluice serve` on the bundled model. Chat streams and stops; the dashboard's numbers move under load;
the key is asked for when the server needs one; the page loads nothing the CSP refuses.

SLUICE_UI_SCREENSHOTS=DIR also saves a screenshot of each view there (docs/ holds the committed ones).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server
from tests.requirements import browser_missing, chromium_path, model_missing, require

SHOTS = os.environ.get("SLUICE_UI_SCREENSHOTS")
KEY = "ui-test-key"


def _serve(tmp: pytest.TempPathFactory, *extra: str) -> Iterator[ServerProc]:
    require("model", model_missing())
    s = start_server(["--backend", "llamacpp", "-o", "n_parallel=4", *extra], tmp.mktemp("ui"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    yield from _serve(tmp_path_factory)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    yield from _serve(tmp_path_factory, "--api-key", KEY)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require("browser", browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):  # noqa: ANN001, ANN201 - playwright types
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.csp_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: "Content Security Policy" in m.text and pg.csp_errors.append(m.text))
    yield pg
    context.close()


def _shot(pg, name: str) -> None:  # noqa: ANN001
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(SHOTS) / f"ui-{name}.png"))


def _until(what: str, check, timeout_s: float) -> None:  # noqa: ANN001
    """Poll from Python: page.wait_for_function evaluates a string, which our CSP (no unsafe-eval) refuses."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _num(pg, sel: str) -> float:  # noqa: ANN001
    try:
        return float(pg.text_content(sel) or "nan")
    except ValueError:
        return float("nan")


def _running(server: ServerProc) -> int:
    return int(httpx.get(f"{server.base_url}/v1/stats", timeout=5).json()["requests_running"])


def test_ui_headers_and_no_external_loads(server: ServerProc) -> None:
    r = httpx.get(f"{server.base_url}/", timeout=5)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "http" not in r.text.replace("http-equiv", "")  # nothing loaded from another origin
    assert httpx.get(f"{server.base_url}/ui/vendor/uPlot-LICENSE.txt", timeout=5).status_code == 200
    assert httpx.get(f"{server.base_url}/ui/../serve/config.py", timeout=5).status_code == 404


def test_chat_streams_answer(server: ServerProc, page) -> None:  # noqa: ANN001
    page.goto(server.base_url + "/")
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached", timeout=15000)
    page.fill("#system", "You are a terse assistant.")
    page.fill("#max_tokens", "24")
    page.fill("#seed", "7")
    page.fill("#prompt", "Name one colour. <b>not bold</b>")
    page.click("#send")
    done = page.wait_for_selector(".msg.assistant[data-state='done']", timeout=60000)
    assert done.inner_text().strip().lower().startswith("assistant")
    answer = page.inner_text(".msg.assistant .text")
    assert answer.strip(), page.inner_text("#status")
    assert page.inner_text("#status").startswith("done")
    # the user's markup stayed text: no element was created from it
    assert page.locator(".msg.user b").count() == 0
    assert "<b>not bold</b>" in page.inner_text(".msg.user .text")
    _shot(page, "chat")
    page.reload()  # the conversation is kept in the browser
    page.wait_for_selector(".msg.assistant", timeout=10000)
    assert page.inner_text(".msg.assistant .text") == answer
    assert not page.csp_errors, page.csp_errors


def test_stop_ends_generation(server: ServerProc, page) -> None:  # noqa: ANN001
    page.goto(server.base_url + "/#chat")
    page.click("#clear")
    page.fill("#max_tokens", "1500")
    page.fill("#temperature", "1.0")
    page.fill("#prompt", "Write a very long story about a dragon who learns to bake bread.")
    page.click("#send")
    _until("streamed text", lambda: len(page.text_content(".msg.assistant .text") or "") > 20, 60)
    assert _running(server) >= 1
    page.click("#stop")
    _until("stopped", lambda: page.text_content("#status") == "stopped", 10)
    assert page.is_disabled("#stop") and not page.is_disabled("#send")
    deadline = time.monotonic() + 10
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(server) == 0  # the server really stopped generating, not just the page


def _load(server: ServerProc, stop: threading.Event) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 48, "temperature": 0.8}
    with httpx.Client(timeout=120) as c:
        while not stop.is_set():
            c.post(f"{server.base_url}/v1/completions", json=body)


def test_dashboard_moves_under_load(server: ServerProc, page) -> None:  # noqa: ANN001
    page.goto(server.base_url + "/#dashboard")
    page.wait_for_selector("#charts .uplot", timeout=10000)
    assert page.locator("#charts .uplot").count() == 6
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(server, stop)) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        _until("tokens/s > 0", lambda: _num(page, "#stat-tps") > 0, 60)
        _until("running > 0", lambda: _num(page, "#stat-running") > 0, 30)
        _until("a TTFT figure", lambda: "ms" in (page.text_content("#stat-ttft") or ""), 30)
        assert "up" in page.inner_text("#replicas tbody")
        time.sleep(3)  # a few more points on the charts for the screenshot
        _shot(page, "dashboard")
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=130)
    _until("running back to 0", lambda: page.text_content("#stat-running") == "0", 30)
    assert not page.csp_errors, page.csp_errors


def test_key_is_asked_once(keyed_server: ServerProc, page) -> None:  # noqa: ANN001
    assert httpx.get(f"{keyed_server.base_url}/", timeout=5).status_code == 200  # static files are open
    assert httpx.get(f"{keyed_server.base_url}/v1/stats", timeout=5).status_code == 401  # data is not
    page.goto(keyed_server.base_url + "/")
    page.wait_for_selector("#key-form:not([hidden])", timeout=10000)
    _shot(page, "key")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached", timeout=15000)
    page.goto(keyed_server.base_url + "/#dashboard")  # same tab: the key is remembered
    _until("stats shown", lambda: page.text_content("#stat-running") == "0", 15)
    assert page.locator("#key-form").is_hidden()
