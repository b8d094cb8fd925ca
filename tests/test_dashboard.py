"""
The dashboard at ``/`` in a real browser: headless Chromium under Selenium
against a real ``twistd netmodels`` server and client. The page loads without
console errors, shows the client's connection live, refuses the reset button
without the admin token, and shows the connection closed with its reason once
the operator resets it with the token. Also, without a browser: the page is
served whole (stylesheet and script inlined, nothing from another host).

Skips, saying what to install, where Chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest, TestCase

from netmodels.daemon.dashboard import dashboard_page

from . import _browser
from ._support import listening_port, spawn_twistd, status_port, temp_dir, unique_id

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


ADMIN_TOKEN = "dashboard-test-admin-token"


def watch_a_reset(status: int, server_id: str, client_id: str) -> dict[str, Any]:
    """
    In a thread (Selenium blocks): load the page, wait for the client's
    connection to show open, press its reset button with a wrong admin token,
    then with the right one, and wait for the page to show it closed.
    Returns what the page showed.
    """
    from selenium.common.exceptions import StaleElementReferenceException
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

        def press_reset(token: str) -> str:
            field = driver.find_element(By.ID, "admin-token")
            field.clear()
            field.send_keys(token)
            before = driver.find_element(By.ID, "command-result").text
            # Looked up again each time: the table is redrawn every second.
            button = f'{row}[data-id="{connection_id}"][data-state="open"] button[title^="reset"]'
            WebDriverWait(driver, PAGE_DEADLINE, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: d.find_element(By.CSS_SELECTOR, button).click() or True
            )
            return str(
                WebDriverWait(driver, PAGE_DEADLINE).until(
                    lambda d: (text := d.find_element(By.ID, "command-result").text) != before and text
                )
            )

        refused = press_reset("wrong-token")
        errors_refused = console_errors(driver)
        done = press_reset(ADMIN_TOKEN)

        closed_row = f'{row}[data-id="{connection_id}"][data-state="closed"]'

        def closed_fields(d: Any) -> dict[str, str] | None:
            # Read in one go, and again if the table was redrawn (every second) meanwhile.
            found = d.find_elements(By.CSS_SELECTOR, closed_row)
            if not found:
                return None
            return {
                "reason": found[0].get_attribute("data-reason"),
                "reason_text": found[0].find_element(By.CSS_SELECTOR, "td.reason").text,
                "row_text": found[0].text,
            }

        stale = (StaleElementReferenceException,)
        closed = WebDriverWait(driver, PAGE_DEADLINE, ignored_exceptions=stale).until(closed_fields)
        legend = WebDriverWait(driver, PAGE_DEADLINE, ignored_exceptions=stale).until(
            lambda d: [
                e.text
                for e in d.find_elements(By.CSS_SELECTOR, '#closes-legend .total[data-reason="aborted"]')
            ]
        )[0]
        bars = driver.find_elements(By.CSS_SELECTOR, '#closes-chart rect[data-reason="aborted"]')
        return {
            "errors_on_load": errors_on_load,
            "connection_id": connection_id,
            "refused": refused,
            "errors_refused": errors_refused,
            "done": done,
            **closed,
            "legend": legend,
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
        token_file = os.path.join(temp_dir(self), "admin-token")
        with open(token_file, "w") as file:
            file.write(ADMIN_TOKEN + "\n")
        server = spawn_twistd(
            self,
            [
                *("netmodels", "--listen", LOOPBACK_ANY, "--status", LOOPBACK_ANY, "--node-id", server_id),
                *("--admin-token-file", token_file),
            ],
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
        self.assertEqual(
            seen["refused"], f"reset {seen['connection_id']} on {server_id}: missing or wrong bearer token"
        )
        # The refused request is the only thing the console reports: the browser logs a 401.
        self.assertEqual([" 401 " in entry["message"] for entry in seen["errors_refused"]], [True])
        self.assertEqual(seen["done"], f"reset {seen['connection_id']} on {server_id}: done")
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
