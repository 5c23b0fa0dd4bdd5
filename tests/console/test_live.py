"""The console's Live page in a real Chromium (issue 29): it loads with no console error
under a strict CSP, its numbers move with traffic without a reload, a circuit a failing
upstream opened shows as cooling down with its time left, and a model name holding
markup is shown as text. Its answers' headers, and its key kept out of URLs and logs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from polyroute.server.console import CONTENT_SECURITY_POLICY
from tests.console.conftest import (
    Gateway,
    Loop,
    console_config,
    shoot,
    sign_in,
    sign_out,
    start_gateway,
    stop_gateway,
    text_of,
    wait,
)
from tests.server.helpers import ADMIN_KEY
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HOSTILE = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
"""A model name an upstream lists (anyone who runs one chooses its names)."""
USAGE = {"prompt_tokens": 400, "completion_tokens": 60, "total_tokens": 460}


@dataclass
class Stage:
    gateway: Gateway
    up: OpenAIUpstream
    flaky: OpenAIUpstream


@pytest.fixture(scope="module")
def stage(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    up = loop.run(OpenAIUpstream(models=["m", HOSTILE]).start())
    flaky = loop.run(OpenAIUpstream(models=["broken"]).start())
    flaky.default = Script(status=503, error_body='{"error": {"message": "overloaded <b>now</b>"}}')
    folder = tmp_path_factory.mktemp("console-live")
    config = console_config({"up": up, "flaky": flaky}, folder)
    config["cooldown"] = {"failures": 2, "seconds": 300}
    config["providers"][0]["limits"] = {"rpm": 1000, "concurrent": 8}
    served = start_gateway(config, folder)
    try:
        yield Stage(served, up, flaky)
    finally:
        stop_gateway(served)
        loop.run(up.stop())
        loop.run(flaky.stop())


def row(driver: WebDriver, entry: str, cell: str) -> str:
    return text_of(driver, f'#live-table tr[data-entry="{entry}"] td.{cell}') or ""


def test_the_page_loads_with_no_console_error_and_asks_for_the_admin_key(
    stage: Stage, clean_console: WebDriver, screenshots: Path
) -> None:
    driver = clean_console
    sign_out(driver, stage.gateway.url)
    field = wait(driver, lambda d: d.find_element(By.ID, "admin-key"))
    assert field.get_attribute("type") == "password"
    assert not driver.find_element(By.ID, "nav").is_displayed()
    shoot(driver, screenshots, "sign-in")
    field.send_keys("pr-not-the-admin-key-000000")
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait(driver, lambda d: text_of(d, "#login-error") == "That is not the admin key.")
    # The refused key's 401 is the one console message here: the network's, not the page's.
    wait(driver, lambda d: any("401" in entry["message"] for entry in d.get_log("browser")))
    sign_in(driver, stage.gateway.url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#live-table tr[data-entry="up"]'))
    assert driver.execute_script("return sessionStorage.getItem('polyroute.adminKey')") == ADMIN_KEY
    assert ADMIN_KEY not in driver.current_url
    assert driver.execute_script("return document.cookie") == ""


def test_the_live_numbers_change_with_traffic_without_a_reload(
    stage: Stage, clean_console: WebDriver, screenshots: Path
) -> None:
    driver = clean_console
    sign_in(driver, stage.gateway.url)
    wait(driver, lambda d: row(d, "up", "attempts") == "0")
    driver.execute_script("window.__samePage = true")
    before = text_of(driver, "#tile-requests")
    for _ in range(3):
        assert stage.gateway.chat("m")[0] == 200
    wait(driver, lambda d: row(d, "up", "attempts") == "3")
    assert row(driver, "up", "limits").split("\n") == ["rpm 3/1000", "concurrent 0/8"]
    wait(driver, lambda d: text_of(d, "#tile-requests") != before)
    assert int(text_of(driver, "#tile-requests") or 0) >= 3
    assert row(driver, "up", "ttft-p50").endswith(" ms")  # measured: no longer a dash
    assert driver.execute_script("return window.__samePage") is True  # never reloaded
    lines = driver.find_elements(By.CSS_SELECTOR, "#chart-requests polyline")
    assert lines, "the requests chart drew no line"
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        shape_traffic(stage)
    docs_span(driver)
    shoot(driver, screenshots, "live", height=900)  # the four charts too


def shape_traffic(stage: Stage) -> None:
    """Only for docs/console.md's pictures: about 80 s of traffic, so that the charts
    have a shape: steady, then slower answers with failures among them (retried), then
    steady again. Each answer takes 0.1 to 0.2 s at the upstream (its pause between
    chunks): the requests pace themselves, nothing here waits on a clock."""
    for index in range(500):
        troubled = 200 <= index < 330
        stage.up.then(Script(delay=0.05 if troubled else 0.025, usage=USAGE))
        if troubled and index % 4 == 0:
            stage.up.then(Script(status=503, error_body='{"error": "busy"}'))
        assert stage.gateway.chat("m")[0] == 200


def docs_span(driver: WebDriver) -> None:
    """For docs/console.md's pictures, the charts of the last 5 minutes (the tests run
    for less than one)."""
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        Select(driver.find_element(By.ID, "chart-span")).select_by_value("300")


def test_a_circuit_a_failing_upstream_opened_shows_as_cooling_down(
    stage: Stage, clean_console: WebDriver, screenshots: Path
) -> None:
    driver = clean_console
    sign_in(driver, stage.gateway.url)
    wait(driver, lambda d: row(d, "flaky", "circuit") == "healthy")
    status, _ = stage.gateway.chat("broken")  # two tries, two 503s: the circuit opens
    assert status >= 500
    circuit = wait(
        driver,
        lambda d: (
            row(d, "flaky", "circuit").startswith("cooling down") and row(d, "flaky", "circuit")
        ),
    )
    assert circuit.endswith("s left)")
    assert (
        driver.execute_script(
            "return document.querySelector('#live-table tr[data-entry=flaky]').className"
        )
        == "cooling"
    )
    assert row(driver, "flaky", "last-error").startswith("503 UpstreamStatusError: flaky: HTTP 503")
    whole = driver.execute_script(
        "return document.querySelector('#live-table tr[data-entry=flaky] td.last-error').title"
    )
    assert "overloaded <b>now</b>" in whole  # an upstream's markup, kept as text
    assert driver.find_elements(By.CSS_SELECTOR, "#live-table td.last-error b") == []
    assert row(driver, "up", "circuit") == "healthy"
    docs_span(driver)
    shoot(driver, screenshots, "live-cooling-down")


def test_a_model_name_holding_markup_is_shown_as_text(
    stage: Stage, clean_console: WebDriver
) -> None:
    driver = clean_console
    sign_in(driver, stage.gateway.url)
    models = wait(driver, lambda d: row(d, "up", "models"))
    assert HOSTILE in models
    assert driver.execute_script("return window.__pwned") is None
    assert driver.find_elements(By.CSS_SELECTOR, "#live-table script, #live-table img") == []


def test_the_console_answers_with_a_strict_policy_and_no_key_in_a_url(stage: Stage) -> None:
    gateway = stage.gateway
    status, headers, body = gateway.get("/ui")
    assert status == 200
    assert b"<script" in body
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    assert (headers["X-Content-Type-Options"], headers["Referrer-Policy"]) == (
        "nosniff",
        "no-referrer",
    )
    assert re.search(rb"\son[a-z]+\s*=", body) is None  # no inline handler
    assert all(b" src=" in tag for tag in re.findall(rb"<script[^>]*>", body))  # no inline script
    status, headers, _ = gateway.get("/ui/main.js")
    assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    assert gateway.get("/ui/..%2Fconsole.py")[0] == 404
    assert gateway.get("/admin/live")[0] == 401
    assert (
        gateway.get("/admin/live", {"Authorization": "Bearer pr-console-ci-0123456789"})[0] == 403
    )
    status, headers, _ = gateway.get("/admin/keys", {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert (status, headers["Cache-Control"]) == (200, "no-store")
    assert gateway.get(f"/admin/live?key={ADMIN_KEY}")[0] == 401  # a key in a URL opens nothing
