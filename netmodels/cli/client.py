"""
The HTTP side of the CLI: one node's status endpoint, and the errors that
mean something to an operator, each with its exit code.

Synchronous on purpose: a command makes one or two requests and exits.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = [
    "EXIT_AUTH",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CommandError",
    "NodeClient",
    "base_url",
]

#: The node answered and said no: no such connection, client or member.
EXIT_REFUSED = 1
#: A bad option or argument (click's own code for usage errors).
EXIT_USAGE = 2
#: No answer: nothing listening, a timeout, or not a netmodels status endpoint.
EXIT_UNREACHABLE = 3
#: The node wants credentials it did not get (401, 403).
EXIT_AUTH = 4


class CommandError(Exception):
    """What went wrong, in one line, and the exit code that says so."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def base_url(url: str) -> str:
    """
    The endpoint's root from what an operator types: ``http://host:port``,
    with or without a trailing ``/`` or ``/status``. ``ValueError`` names
    what is wrong with anything else.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{url!r} has a bad port (1-65535)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: give the endpoint's address, without ?query or #fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/status"):
        path = path[: -len("/status")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class NodeClient:
    """
    Requests to the status endpoint at ``url`` (see :func:`base_url`).

    :param timeout: seconds to wait for the node's answer.
    :param token: sent as ``Authorization: Bearer``, for routes that need it.
    """

    def __init__(self, url: str, timeout: float = 5.0, token: str | None = None) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self.token = token

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        """``GET path`` as JSON."""
        return self._request("GET", path, query)

    def post(self, path: str, body: bytes = b"", query: dict[str, str] | None = None) -> Any:
        """``POST path`` with ``body``; the answer as JSON."""
        return self._request("POST", path, query, body)

    def _request(
        self, method: str, path: str, query: dict[str, str] | None, body: bytes | None = None
    ) -> Any:
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(target, data=body, method=method)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return self._json(target, response.read())
        except urllib.error.HTTPError as error:
            raise self._refusal(target, error) from None
        except urllib.error.URLError as error:
            raise CommandError(f"no node at {self.url}: {_why(error.reason)}", EXIT_UNREACHABLE) from None
        except TimeoutError:
            raise CommandError(
                f"no answer from {self.url} within {self.timeout:g} s", EXIT_UNREACHABLE
            ) from None
        except (ConnectionError, OSError) as error:
            raise CommandError(f"lost the node at {self.url}: {_why(error)}", EXIT_UNREACHABLE) from None

    def _json(self, target: str, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise CommandError(
                f"{target} did not answer JSON: is it a netmodels --status endpoint?", EXIT_UNREACHABLE
            ) from None

    def _refusal(self, target: str, error: urllib.error.HTTPError) -> CommandError:
        try:
            said = json.loads(error.read()).get("error", "")
        except (ValueError, AttributeError, OSError):
            said = ""
        code = EXIT_AUTH if error.code in (401, 403) else EXIT_REFUSED
        return CommandError(f"{error.code} from {target}: {said or error.reason}", code)


def _why(reason: object) -> str:
    """An OS error as its words only: "Connection refused", not "[Errno 111] ..."."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
