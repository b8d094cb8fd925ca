"""
The dashboard at ``/`` in a real browser: headless Chromium under Selenium
against a real ``twistd netmodels`` server and client. The page loads without
console errors, shows the client's connection live, and shows it closed with
its reason once an operator resets it. Also, without a browser: the page is
served whole (stylesheet and script inlined, nothing from another host).

Skips, saying what to install, where Chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest, TestCase

from netmodels.daemon.dashboard import dashboard_page

from . import _browser
from ._support import listening_port, spawn_twistd, status_port, unique_id

try:
    import pytest
except ImportError:  # trial does not need pytest
    pytestmark: list[Any] = []
else:
    pytestmark = [pytest.mark.slow]

LOOPBACK_ANY = "tcp:0:interface=127.0.0.1"
#: Seconds the page has to show a change (it polls every second).
PAGE_DEADLINE = 15


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's errors since the last call (Chromium's level SEVERE)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def post(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
        return document


def watch_a_reset(status: int, server_id: str, client_id: str) -> dict[str, Any]:
    """
    In a thread (Selenium blocks): load the page, wait for the client's
    connection to show open, reset it through the status endpoint, and wait
    for the page to show it closed. Returns what the page showed.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, profile = _browser.chromium()
    try:
        base = f"http://127.0.0.1:{status}/"
        driver.get(base)
        row = f'tr[data-node="{server_id}"][data-peer-id="{client_id}"]'
        live = WebDriverWait(driver, PAGE_DEADLINE).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f'{row}[data-state="open"]')
        )
        connection_id = live[0].get_attribute("data-id")
        errors_on_load = console_errors(driver)

        done = post(f"{base}connections/{connection_id}/reset?node={server_id}")

        closed_row = f'{row}[data-id="{connection_id}"][data-state="closed"]'
        closed = WebDriverWait(driver, PAGE_DEADLINE).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, closed_row)
        )[0]
        reason_cell = closed.find_element(By.CSS_SELECTOR, "td.reason")
        legend = WebDriverWait(driver, PAGE_DEADLINE).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#closes-legend .total[data-reason="aborted"]')
        )[0]
        bars = driver.find_elements(By.CSS_SELECTOR, '#closes-chart rect[data-reason="aborted"]')
        return {
            "errors_on_load": errors_on_load,
            "done": done,
            "reason": closed.get_attribute("data-reason"),
            "reason_text": reason_cell.text,
            "row_text": closed.text,
            "legend": legend.text,
            "bars": len(bars),
            "errors_after": console_errors(driver),
        }
    finally:
        _browser.quit_chromium(driver, profile)


class DashboardInBrowserTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        why = _browser.missing()
        if why is not None:
            raise SkipTest(f"no browser for the dashboard test: {why}")

    @defer.inlineCallbacks
    def test_shows_a_connection_closing_with_its_reason(self) -> Any:
        server_id = unique_id("srv")
        client_id = unique_id("cli")
        server = spawn_twistd(
            self, ["netmodels", "--listen", LOOPBACK_ANY, "--status", LOOPBACK_ANY, "--node-id", server_id]
        )
        port = yield listening_port(server)
        status = yield status_port(server)
        spawn_twistd(
            self,
            [
                *("netmodels", "--role", "client", "--connect", f"tcp:127.0.0.1:{port}"),
                *("--node-id", client_id, "--interval", "0"),
            ],
        )

        seen = yield threads.deferToThread(watch_a_reset, status, server_id, client_id)

        self.assertEqual(seen["errors_on_load"], [])
        self.assertEqual(seen["done"]["done"], "reset")
        # The server sent the RST itself: "aborted" by the local side, and why.
        self.assertEqual(seen["reason"], "aborted")
        self.assertEqual(seen["reason_text"], "aborted")
        self.assertIn("aborted local", seen["row_text"])
        self.assertIn("reset by operator", seen["row_text"])
        self.assertEqual(seen["legend"], "aborted 1")
        self.assertEqual(seen["bars"], 1)
        self.assertEqual(seen["errors_after"], [])


class DashboardPageTests(TestCase):
    def test_page_is_whole_and_self_contained(self) -> None:
        page = dashboard_page().decode("utf-8")
        self.assertNotIn("/* dashboard.css */", page)
        self.assertNotIn("/* dashboard.js */", page)
        self.assertIn("async function tick()", page)
        self.assertIn('id="closes-chart"', page)
        for remote in ("http://", "https://", "//cdn"):
            # The only absolute URL is SVG's namespace, which is never fetched.
            self.assertEqual(page.replace("http://www.w3.org/2000/svg", "").count(remote), 0, remote)
