"""
What the callback server and client share: the token check, the callback endpoint, the paths.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import attrs

from netmodels.core.frames import Hello
from netmodels.runtime.application import Application
from netmodels.runtime.session import (
    SessionSettings,
)

__all__ = ["CALLBACK", "DIAL_TIMEOUT", "FALLBACK", "callback_endpoint", "token_checker"]


#: Seconds a callback dial may take before it counts as ``timeout``.
DIAL_TIMEOUT = 5.0


CALLBACK = "callback"


FALLBACK = "fallback"


def token_checker(token: str | None, role: str) -> Callable[[Hello], str | None]:
    """
    ``authenticate`` for sessions: a peer of ``role`` must carry ``token`` in
    its HELLO (compared in constant time). ``None`` asks for nothing.
    """
    if token is None:
        return lambda hello: None
    expected = token.encode()

    def check(hello: Hello) -> str | None:
        if hello.role != role:
            return None
        offered = hello.extra.get("token")
        if not isinstance(offered, str):
            return "no token in HELLO"
        if not hmac.compare_digest(offered.encode(), expected):
            return "wrong token"
        return None

    return check


def callback_endpoint(kind: str, host: str, port: int, timeout: float = DIAL_TIMEOUT) -> str:
    """The client endpoint string a server dials for a callback at ``host:port``."""
    escaped = host.replace(":", "\\:")
    if kind == "tls":
        return f"tls:{escaped}:{port}:timeout={timeout:g}"
    return f"{kind}:host={escaped}:port={port}:timeout={timeout:g}"


def _with_extra(settings: SessionSettings, **extra: Any) -> SessionSettings:
    hello = settings.hello
    return attrs.evolve(settings, hello=attrs.evolve(hello, extra={**hello.extra, **extra}))


class _Quiet(Application):
    """The application of callback connections: they carry DELIVER and ACK only."""
