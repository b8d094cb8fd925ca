"""
The dashboard at ``GET /``: connections live, closes by reason, counters, and
each topology's section (the p2p mesh as a graph), redrawn every second from
``GET /status/all``.

The page is ``static/dashboard.html`` with ``dashboard.css`` and
``dashboard.js`` inlined into it: one response, nothing fetched from another
host (nodes often run where there is no internet), no build step.
"""

from __future__ import annotations

import functools
from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = ["Dashboard", "dashboard_page"]

_STATIC = "static"


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(_STATIC, name).read_text(encoding="utf-8")


@functools.cache
def dashboard_page() -> bytes:
    """The page's HTML, its stylesheet and script inlined (read once)."""
    html = _asset("dashboard.html")
    for placeholder, name in (
        ("/* dashboard.css */", "dashboard.css"),
        ("/* dashboard.js */", "dashboard.js"),
    ):
        if placeholder not in html:
            raise RuntimeError(f"dashboard.html lost its {placeholder} placeholder")
        html = html.replace(placeholder, _asset(name))
    return html.encode("utf-8")


class Dashboard(Resource):
    """Serves :func:`dashboard_page` for ``GET``."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return dashboard_page()
