"""What the status endpoint's resources share, the daemon's and the routes topologies add."""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.web.server import Request

__all__ = ["json_response", "read_token_file", "refuse_without_bearer"]


def json_response(request: Request, document: Any, code: int = 200) -> bytes:
    """``document`` as the JSON body of ``request``'s response, with ``code``; never cached."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=1, default=str).encode() + b"\n"


def refuse_without_bearer(request: Request, token: str | None, off: str) -> bytes | None:
    """
    None when ``request`` carries ``Authorization: Bearer <token>``; else the
    response that refuses it: 403 saying ``off`` when there is no ``token``
    (the route is off), 401 asking for the bearer token when it is missing or
    wrong. Compared in constant time.
    """
    if token is None:
        return json_response(request, {"error": off}, 403)
    offered = request.getHeader(b"authorization") or b""
    if isinstance(offered, str):
        offered = offered.encode()
    if not hmac.compare_digest(offered, f"Bearer {token}".encode()):
        request.setHeader(b"www-authenticate", b"Bearer")
        return json_response(request, {"error": "missing or wrong bearer token"}, 401)
    return None


def read_token_file(option: str, path: str) -> str:
    """
    The token in ``path`` (its first line, without surrounding blanks); a
    ``ValueError`` naming ``--option`` when it cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except OSError as e:
        raise ValueError(f"--{option}: cannot read {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--{option}: {path!r} is not text") from None
    if not token:
        raise ValueError(f"--{option}: {path!r} holds no token (its first line is empty)")
    return token
