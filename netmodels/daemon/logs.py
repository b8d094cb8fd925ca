"""
``--log-format json``: one JSON object a line per log event, for log pipelines.

twistd starts logging after ``makeService``, with the ``ILogObserver``
component of the application if it has one (``AppLogger.start``), else with
a text observer on ``--logfile``. :func:`json_log_observer` is that component:
Twisted's ``jsonFileLogObserver`` on the same file twistd would have used, so
``-n``, ``--logfile FILE`` and ``--logfile=-`` keep their meaning.

Every event keeps its fields (``log_namespace``, ``log_level``, ``node``,
``id``, ``reason``, ``initiator``, ...); a connection's ``record`` becomes its
``GET /status`` JSON, and ``message`` is the line the text log would show.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent, jsonFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["LOG_FORMATS", "JsonLogObserver", "json_log_observer", "log_file"]

#: The values ``--log-format`` takes; ``text`` is twistd's own format.
LOG_FORMATS = ("text", "json")


@implementer(ILogObserver)
class JsonLogObserver:
    """Writes each event as one line of JSON (no RFC 7464 separator: plain JSON lines)."""

    def __init__(self, out: IO[str]) -> None:
        self._json: FileLogObserver = jsonFileLogObserver(out, recordSeparator="")

    def __call__(self, event: LogEvent) -> None:
        self._json(_serializable(event))


def _serializable(event: LogEvent) -> LogEvent:
    document = dict(event)
    for key, value in event.items():
        # ConnectionRecord and the like: their JSON shape, not {"unpersistable": true}.
        as_dict = getattr(value, "as_dict", None)
        if callable(as_dict):
            document[key] = as_dict()
    if "message" not in document and event.get("log_format") is not None:
        document["message"] = formatEvent(event)
    return document


def log_file(server_options: Mapping[str, Any] | None) -> IO[str]:
    """
    The file twistd's own observer would write to, given twistd's options:
    stdout for ``--logfile=-`` or ``-n`` without ``--logfile``, else
    ``--logfile`` (``twistd.log`` by default), rotated like twistd's.
    """
    options = server_options or {}
    name = options.get("logfile") or ""
    if name == "-" or (not name and (options.get("nodaemon") or server_options is None)):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")  # type: ignore[no-any-return]


def json_log_observer(server_options: Mapping[str, Any] | None) -> JsonLogObserver:
    """The ``ILogObserver`` for ``--log-format json`` under twistd's ``server_options``."""
    return JsonLogObserver(log_file(server_options))
