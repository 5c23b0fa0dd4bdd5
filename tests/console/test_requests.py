"""The console's Requests page in a real Chromium (issue 29): the request log with its
filters, and a request relayed mid-answer opened as the timeline of its attempts (the
cut one, with its error and the characters it delivered; the one that took over there)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.console.conftest import (
    Gateway,
    Loop,
    console_config,
    shoot,
    sign_in,
    start_gateway,
    stop_gateway,
    text_of,
    wait,
)
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

DELIVERED = len("Hello, ")
"""What the first upstream sends before its connection is cut (two chunks)."""


@dataclass
class Stage:
    gateway: Gateway
    up: OpenAIUpstream


@pytest.fixture(scope="module")
def stage(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    up = loop.run(OpenAIUpstream(models=["m"]).start())
    backup = loop.run(OpenAIUpstream(models=["m"]).start())
    folder = tmp_path_factory.mktemp("console-requests")
    served = start_gateway(console_config({"up": up, "backup": backup}, folder), folder)
    try:
        yield Stage(served, up)
    finally:
        stop_gateway(served)
        loop.run(up.stop())
        loop.run(backup.stop())


def listed(driver: WebDriver, request_id: str) -> bool:
    """Whether the log, as the filters ask, shows ``request_id`` (applying them again if
    not: the log is written in the background, within a second or two of a request's
    end, and the page may still show what it loaded before the filters changed)."""
    shown = driver.execute_script(
        "const rows = [...document.querySelectorAll('#requests-table tbody tr')];"
        "const status = document.querySelector('#request-filters [name=status]').value;"
        "return rows.some((row) => row.dataset.requestId === arguments[0])"
        " && rows.every((row) => !status || row.classList.contains('status-' + status));",
        request_id,
    )
    if not shown:
        driver.find_element(By.ID, "apply-filters").click()
    return bool(shown)


def test_a_relayed_request_opens_as_the_timeline_of_its_attempts(
    stage: Stage, clean_console: WebDriver, screenshots: Path
) -> None:
    request_id = f"relay-{secrets.token_hex(4)}"
    stage.up.then(Script(reset_after=2))  # cut after "Hello, ": backup goes on from there
    assert stage.gateway.chat("m", request_id=request_id)[0] == 200
    for _ in range(3):
        assert stage.gateway.chat("m")[0] == 200  # the log holds others too
    driver = clean_console
    sign_in(driver, stage.gateway.url)
    driver.find_element(By.CSS_SELECTOR, '#nav a[data-page="requests"]').click()
    wait(driver, lambda d: listed(d, request_id))
    shoot(driver, screenshots, "requests")
    Select(driver.find_element(By.NAME, "status")).select_by_visible_text("switched")
    wait(driver, lambda d: listed(d, request_id))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#requests-table tbody tr")) == 1
    driver.find_element(
        By.CSS_SELECTOR, f'#requests-table tr[data-request-id="{request_id}"]'
    ).click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#request-attempts tbody tr")) == 2)
    assert request_id in (text_of(driver, "#request-title") or "")
    cut, relayed = driver.find_elements(By.CSS_SELECTOR, "#request-attempts tbody tr")
    assert cut.find_element(By.CSS_SELECTOR, "td.chars").text == str(DELIVERED)
    assert "failed" in cut.text
    assert "UpstreamConnectionError" in cut.text
    assert relayed.find_element(By.CSS_SELECTOR, "td.relay").text == (
        f"took over at {DELIVERED} characters delivered"
    )
    assert "ok" in relayed.text
    assert "backup" in relayed.text
    bars = driver.find_elements(By.CSS_SELECTOR, "#request-timeline rect.bar")
    assert [bar.get_attribute("class") for bar in bars] == ["bar failed", "bar ok"]
    assert driver.find_elements(By.CSS_SELECTOR, "#request-timeline line.relay")
    assert "switched" in (text_of(driver, "#request-summary") or "")
    shoot(driver, screenshots, "request-timeline")
    driver.back()  # the fragment is the page: back is the log again
    wait(driver, lambda d: d.find_element(By.ID, "page-requests").is_displayed())


def test_the_log_filters_by_status_and_key(stage: Stage, clean_console: WebDriver) -> None:
    refused = f"refused-{secrets.token_hex(4)}"
    assert stage.gateway.chat("no-such-model", request_id=refused)[0] == 404
    driver = clean_console
    sign_in(driver, stage.gateway.url)
    driver.find_element(By.CSS_SELECTOR, '#nav a[data-page="requests"]').click()
    Select(driver.find_element(By.NAME, "status")).select_by_visible_text("failed")
    driver.find_element(By.NAME, "key").send_keys("ci")
    wait(driver, lambda d: listed(d, refused))
    statuses = {
        cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#requests-table td.status")
    }
    assert statuses == {"failed"}
    keys = {cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#requests-table td.key")}
    assert keys == {"ci"}
