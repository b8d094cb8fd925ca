"""What the status endpoint's resources share, the daemon's and the routes topologies add."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

__all__ = ["json_response"]


def json_response(request: Request, document: Any, code: int = 200) -> bytes:
    """``document`` as the JSON body of ``request``'s response, with ``code``; never cached."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=1, default=str).encode() + b"\n"
