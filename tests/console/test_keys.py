"""The console's Keys and teams page in a real Chromium (issue 29): a key made in the page
works on /v1/chat/completions at once (its secret shown once), its spend shows against
its budget, a rotation's new secret replaces the old one, and a revoked key is refused."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from polyroute.server.admin import DISPLAY_CHARS
from tests.console.conftest import (
    Gateway,
    Loop,
    click,
    console_config,
    shoot,
    sign_in,
    start_gateway,
    stop_gateway,
    text_of,
    wait,
)
from tests.server.helpers import ADMIN_KEY
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
COST = (1000 * 2.0 + 200 * 8.0) / 1e6  # $0.0036 at console_config's price


@pytest.fixture(scope="module")
def gateway(loop: Loop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    up = loop.run(OpenAIUpstream(Script(usage=USAGE), models=["m"]).start())
    folder = tmp_path_factory.mktemp("console-keys")
    served = start_gateway(console_config({"up": up}, folder), folder)
    try:
        yield served
    finally:
        stop_gateway(served)
        loop.run(up.stop())


def admin_call(gateway: Gateway, method: str, path: str, body: Any) -> None:
    request = urllib.request.Request(
        f"{gateway.url}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status in (200, 201)


def secret_shown(driver: WebDriver, after: str | None = None) -> str | None:
    """The secret the page shows once (a new one, when ``after`` was shown before)."""
    shown = driver.execute_script(
        "const box = document.getElementById('new-secret');"
        "return box.hidden ? null : document.getElementById('new-secret-value').value;"
    )
    return shown if shown and shown != after else None


def key_row(driver: WebDriver, name: str, cell: str) -> str:
    return text_of(driver, f'#keys-table tr[data-key="{name}"] td.{cell}') or ""


def test_a_key_made_in_the_page_works_then_rotates_and_is_revoked(
    gateway: Gateway, clean_console: WebDriver, screenshots: Path
) -> None:
    admin_call(
        gateway,
        "POST",
        "/admin/teams",
        {"name": "search", "budget": {"usd": 50, "period": "month"}},
    )
    driver = clean_console
    sign_in(driver, gateway.url)
    driver.find_element(By.CSS_SELECTOR, '#nav a[data-page="keys"]').click()
    form = driver.find_element(By.ID, "new-key")
    wait(driver, lambda d: len(Select(form.find_element(By.NAME, "team")).options) == 2)
    form.find_element(By.NAME, "name").send_keys("made-in-page")
    Select(form.find_element(By.NAME, "team")).select_by_visible_text("search")
    form.find_element(By.NAME, "rpm").send_keys("600")
    form.find_element(By.NAME, "budget_usd").send_keys("0.01")
    Select(form.find_element(By.NAME, "budget_period")).select_by_visible_text("day")
    driver.find_element(By.ID, "create-key").click()
    secret = wait(driver, secret_shown)
    assert secret.startswith("pr-")
    wait(driver, lambda d: key_row(d, "made-in-page", "status") == "active")

    status, body = gateway.chat("m", key=secret)  # applied in this gateway at once
    assert status == 200, body
    # The ledger is written within a second or so: refresh the page until it shows.
    spent = f"${COST:.4f}".rstrip("0")

    def shows_spend(d: WebDriver) -> bool:
        if spent in key_row(d, "made-in-page", "spend"):
            return True
        d.find_element(By.ID, "refresh-keys").click()
        return False

    wait(driver, shows_spend)
    assert key_row(driver, "made-in-page", "spend").endswith("of $0.01 per day")
    assert spent in (text_of(driver, '#teams-table tr[data-team="search"] td.spend') or "")
    shoot(driver, screenshots, "keys")

    driver.find_element(By.ID, "new-secret-done").click()
    click(driver, '#keys-table tr[data-key="made-in-page"] button.rotate')  # past a refresh
    rotated = wait(driver, lambda d: secret_shown(d, after=secret))
    # The page shows the new secret, then redraws the table: a button found before the
    # redraw is gone by its click (seen under load). The redrawn row shows the new prefix.
    prefix = rotated[:DISPLAY_CHARS]
    wait(driver, lambda d: key_row(d, "made-in-page", "mono").startswith(prefix))
    assert gateway.chat("m", key=rotated)[0] == 200
    assert gateway.chat("m", key=secret)[0] == 401  # no grace asked: the old one is over

    revoke = '#keys-table tr[data-key="made-in-page"] button.revoke'
    driver.find_element(By.CSS_SELECTOR, revoke).click()
    assert driver.find_element(By.CSS_SELECTOR, revoke).text == "Confirm revoke"  # armed
    driver.find_element(By.CSS_SELECTOR, revoke).click()
    wait(driver, lambda d: key_row(d, "made-in-page", "status") == "revoked")
    assert gateway.chat("m", key=rotated)[0] == 401
