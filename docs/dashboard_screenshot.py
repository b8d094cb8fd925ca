"""
Regenerate docs/_static/dashboard.png: the dashboard of a four-node p2p mesh
in one process, one of its connections reset by the operator (so the table
and the chart show closes with their reasons), in headless Chromium.

    .venv/bin/python docs/dashboard_screenshot.py

Needs Debian's chromium and chromium-driver (``make sysdeps`` as root) and
selenium (the ``test`` extra).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import _browser  # noqa: E402

OUTPUT = REPO / "docs" / "_static" / "dashboard.png"
WIDTH = 1280


def start_mesh(admin_token_file: str) -> tuple[subprocess.Popen[str], int]:
    """A four-node p2p mesh with its status page; returns the process and the page's port."""
    twistd = Path(sys.executable).parent / "twistd"
    command = [sys.executable, str(twistd), "-n", "--pidfile=", "--logfile=-", "netmodels", "-t", "p2p"]
    command += ["--nodes", "4", "--node-id", "peer", "--listen", "tcp:0:interface=127.0.0.1"]
    command += ["--status", "tcp:0:interface=127.0.0.1", "--admin-token-file", admin_token_file]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"Site starting on (\d+)", process.stdout.readline())
        if match:
            return process, int(match.group(1))
    process.terminate()
    raise SystemExit("the mesh did not start its status page in time")


def main() -> None:
    why = _browser.missing()
    if why is not None:
        raise SystemExit(f"cannot take the screenshot: {why}")
    admin_token = secrets.token_urlsafe(24)
    with tempfile.NamedTemporaryFile("w", suffix=".token") as token_file:
        token_file.write(admin_token + "\n")
        token_file.flush()
        process, port = start_mesh(token_file.name)
    base = f"http://127.0.0.1:{port}/"
    try:
        time.sleep(3)  # let the members find each other
        with urllib.request.urlopen(f"{base}status", timeout=5) as response:
            connection = json.loads(response.read())["connections"][0]["id"]
        request = urllib.request.Request(f"{base}connections/{connection}/reset", method="POST", data=b"")
        request.add_header("Authorization", f"Bearer {admin_token}")
        urllib.request.urlopen(request, timeout=5).close()
        time.sleep(3)  # the mesh redials; the page polls every second
        driver, profile = _browser.chromium(WIDTH, 900)
        try:
            driver.get(base)
            time.sleep(2)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(WIDTH, min(height + 40, 1500))  # the first nodes of the mesh are enough
            time.sleep(1)
            OUTPUT.parent.mkdir(exist_ok=True)
            driver.save_screenshot(str(OUTPUT))
        finally:
            _browser.quit_chromium(driver, profile)
    finally:
        process.terminate()
        process.wait(10)
    print(f"wrote {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
