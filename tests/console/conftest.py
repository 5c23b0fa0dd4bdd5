"""The console's stage: a real ``polyroute serve`` (a subprocess, on a SQLite store, with
an admin key) in front of local upstreams, and a real headless Chromium from Debian's
packages driven by Selenium through /usr/bin/chromedriver (never a driver or browser
downloaded: Selenium Manager is not asked).

Selenium's calls block, so the tests are plain functions; the upstreams run on an event
loop of their own in a thread. One browser and one gateway per module: a browser takes
about a second to start.

Screenshots go to a temporary folder (their path is printed with ``-s``), or to the
folder ``CONSOLE_SCREENSHOTS`` names (docs/console.md's are made so, then shrunk to a
palette of 64 colours).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.server.helpers import ADMIN_KEY, free_port
from tests.upstreams.openai import OpenAIUpstream

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1100, 700)
CI_KEY = "pr-console-ci-0123456789"
"""A config key for the traffic the tests send (with a store, every /v1 call needs one)."""
HI = [{"role": "user", "content": "Hi"}]
T = TypeVar("T")


class Loop:
    """An event loop in a thread of its own, for the upstreams."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Gateway:
    """``polyroute serve`` in a subprocess; what it said on stderr, line by line."""

    url: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def chat(
        self, model: str = "m", *, key: str = CI_KEY, request_id: str | None = None
    ) -> tuple[int, Any]:
        """One chat completion (not streamed): its status and decoded body."""
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if request_id is not None:
            headers["x-request-id"] = request_id
        body = json.dumps({"model": model, "messages": HI, "max_tokens": 20}).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/chat/completions", data=body, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, json.load(refused)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        """A GET: its status, headers and body."""
        request = urllib.request.Request(f"{self.url}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, refused.headers, refused.read()


def start_gateway(config: dict[str, Any], folder: Path) -> Gateway:
    """Serve ``config`` with the admin key (``ADMIN_KEY``) and :data:`CI_KEY` set; return
    once it listens."""
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    env.update({"ADMIN_KEY": ADMIN_KEY, "CI_KEY": CI_KEY})
    process = subprocess.Popen(
        [sys.executable, "-m", "polyroute", "serve", "-c", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    served = Gateway(f"http://127.0.0.1:{port}", process)
    listening = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            served.lines.append(line.rstrip("\n"))
            if "polyroute: serving on" in line:
                listening.set()
        listening.set()  # it exited: the check below says so

    served.reader = threading.Thread(target=read, daemon=True)
    served.reader.start()
    assert listening.wait(30), "polyroute serve did not listen within 30 s"
    assert process.poll() is None, "\n".join(served.lines)
    return served


def stop_gateway(served: Gateway) -> None:
    """SIGTERM; it must exit 0 (its live streams ended, not waited out) and never have
    logged the admin key."""
    served.process.send_signal(signal.SIGTERM)
    code = served.process.wait(30)
    if served.reader is not None:
        served.reader.join(10)
    assert served.process.stderr is not None
    served.process.stderr.close()
    log = "\n".join(served.lines)
    assert code == 0, log
    assert ADMIN_KEY not in log


def console_config(upstreams: dict[str, OpenAIUpstream], folder: Path) -> dict[str, Any]:
    """Each upstream as an entry of its name serving the models it lists, a store, the
    admin key and :data:`CI_KEY`."""
    entries = [
        {"name": name, "type": "openai", "base_url": server.base_url,
         "models": server.models, "price": {"input": 2.0, "output": 8.0}}
        for name, server in upstreams.items()
    ]  # fmt: skip
    return {
        "providers": entries,
        "retry": {"attempts": 2, "backoff_initial": 0},
        "store": {"backend": "sqlite", "path": str(folder / "store.db")},
        "gateway": {
            "admin_key_env": "ADMIN_KEY",
            "keys": [{"name": "ci", "key_env": "CI_KEY"}],
        },
    }


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium at 1100x700, its console's messages kept for :func:`console_errors`."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
                     "--disable-extensions", "--no-first-run", "--disable-sync"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path, given: Selenium Manager (which would download one) is not run.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def clean_console(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser; fails the test if the page logged an error or a warning (a CSP
    violation, a failed load, an exception) while it ran."""
    browser.get_log("browser")  # what earlier tests left
    yield browser
    assert console_errors(browser) == []


def console_errors(driver: WebDriver) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] in ("SEVERE", "WARNING")
    ]


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``CONSOLE_SCREENSHOTS``, else a temporary folder."""
    chosen = os.environ.get("CONSOLE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(driver: WebDriver, folder: Path, name: str, height: int = WINDOW[1]) -> Path:
    """A screenshot of the page, ``height`` pixels tall, as ``folder/name.png`` (shrunk
    for the docs when the folder is ``CONSOLE_SCREENSHOTS``'s)."""
    path = folder / f"{name}.png"
    if height != WINDOW[1]:
        driver.set_window_size(WINDOW[0], height)
    try:
        driver.save_screenshot(str(path))
    finally:
        if height != WINDOW[1]:
            driver.set_window_size(*WINDOW)
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        from PIL import Image  # the docs extra's (matplotlib's); only for the docs' images

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    print(f"screenshot: {path}")
    return path


def sign_out(driver: WebDriver, url: str) -> None:
    """Open the console at ``url`` with no key in the tab (its sign-in form shown)."""
    driver.get(f"{url}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()


def sign_in(driver: WebDriver, url: str, key: str = ADMIN_KEY) -> None:
    """Open the console at ``url`` and give the admin key in its form."""
    sign_out(driver, url)
    field = wait(driver, lambda d: d.find_element(By.ID, "admin-key"))
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait(driver, lambda d: d.find_element(By.ID, "nav").is_displayed())


def wait(driver: WebDriver, condition: Callable[[WebDriver], T], seconds: float = 10) -> T:
    """What ``condition`` returns once it is truthy (polled every 50 ms)."""
    found: T = WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)
    return found


def click(driver: WebDriver, selector: str) -> None:
    """Click what ``selector`` finds, found anew when a redraw replaced it between the
    finding and the click (a table the page redraws after an action or a refresh)."""

    def clicked(d: WebDriver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait(driver, clicked)


def text_of(driver: WebDriver, selector: str) -> str | None:
    """The text of the first element ``selector`` finds, or ``None``: read in one call,
    as the live table is redrawn every second (an element found, then read, could be
    gone by then)."""
    found = driver.execute_script(
        "const node = document.querySelector(arguments[0]);"
        "return node === null ? null : node.innerText.trim();",
        selector,
    )
    return None if found is None else str(found)
