"""The callback topology's own command-line options and the settings they make."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen
from twisted.python import usage

from netmodels.runtime.endpoints import check_endpoint
from netmodels.runtime.web import read_token_file

__all__ = ["CallbackOptions", "CallbackSettings"]


@frozen
class CallbackSettings:
    #: The shared secret a client presents in its HELLO (None: none asked).
    token: str | None = field(default=None, repr=False)
    #: Client: the endpoint it listens on for the server to dial back.
    callback: str | None = None
    #: The SQLite file of the server's outbox, or of a client's delivered
    #: ids (None: in memory, lost on restart).
    outbox: str | None = None
    #: Server: the most undelivered messages kept for one client.
    outbox_limit: int = 10_000

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CallbackSettings:
        callback = options.get("callback")
        if callback is not None:
            try:
                check_endpoint(callback, options.get("transport", "tcp"), server=True)
            except Exception as e:
                raise ValueError(f"--callback: bad endpoint {callback!r}: {e}") from None
        limit = str(options.get("outbox-limit", "10000"))
        if not limit.isdigit() or int(limit) < 1:
            raise ValueError(f"--outbox-limit: must be a whole number of at least 1, not {limit!r}")
        return cls(
            token=_token(options.get("token"), options.get("token-file")),
            callback=callback,
            outbox=options.get("outbox"),
            outbox_limit=int(limit),
        )


class CallbackOptions(usage.Options):
    optParameters = [
        ["token", None, None, "The shared secret clients present (prefer --token-file)."],
        ["token-file", None, None, "Read the shared secret from this file (first line)."],
        [
            "callback",
            None,
            None,
            "Client: endpoint to listen on for the server's callbacks, e.g. tcp:0:interface=127.0.0.1.",
        ],
        [
            "outbox",
            None,
            None,
            "SQLite file for the server's outbox (or a client's delivered ids); "
            "without it they live in memory and a restart loses them.",
        ],
        ["outbox-limit", None, "10000", "Server: the most undelivered messages kept per client."],
    ]


def _token(token: str | None, token_file: str | None) -> str | None:
    if token_file is not None:
        if token is not None:
            raise ValueError("--token-file: give --token or --token-file, not both")
        token = read_token_file("token-file", token_file)
    if token is not None and not token:
        raise ValueError("--token: the token must not be empty")
    return token
