"""
``GET /status``: a node's state as JSON; ``GET /`` a page that shows it live;
``GET /metrics`` its counters for Prometheus (:mod:`netmodels.daemon.metrics`).

``POST /connections/<id>/reset`` and ``/close`` end one connection with RST,
or with BYE and FIN, for operators who send ``Authorization: Bearer <admin
token>`` (``--admin-token-file``); without an admin token they are off.

Topologies add routes of their own (``ITopologyContext.add_route``): the
callback topology's ``POST /deliver/<client>``, for one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from netmodels.daemon.dashboard import Dashboard
from netmodels.daemon.metrics import MetricsResource
from netmodels.runtime.interfaces import IPeer
from netmodels.runtime.web import json_response, refuse_without_bearer

__all__ = ["StatusPage", "status_site"]


class _StatusDocument(Resource):
    isLeaf = True

    def __init__(self, render_status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._render_status = render_status

    def render_GET(self, request: Request) -> bytes:
        return json_response(request, self._render_status())


class _ConnectionCommand(Resource):
    """
    ``POST /connections/<id>/reset`` or ``/close``; ``?node=<node id>`` picks
    the node when one process runs several (the first node by default).
    """

    isLeaf = True

    def __init__(self, nodes: Sequence[Any], admin_token: str | None) -> None:
        super().__init__()
        self._nodes = nodes
        self._admin_token = admin_token

    def render_POST(self, request: Request) -> bytes:
        off = "the node has no --admin-token-file: POST /connections is off"
        refusal = refuse_without_bearer(request, self._admin_token, off)
        if refusal is not None:
            return refusal
        parts = [part.decode("ascii", "replace") for part in request.postpath or []]
        if len(parts) != 2 or parts[1] not in ("reset", "close") or not parts[0].isdigit():
            return json_response(request, {"error": "use POST /connections/<id>/reset or /close"}, 404)
        connection_id, action = int(parts[0]), parts[1]
        wanted = (request.args or {}).get(b"node", [b""])[0].decode("utf-8", "replace")
        nodes = [node for node in self._nodes if node.config.node_id == wanted] if wanted else self._nodes[:1]
        if not nodes:
            return json_response(request, {"error": f"no node {wanted!r}"}, 404)
        connection = nodes[0].manager.find(connection_id)
        if connection is None:
            return json_response(request, {"error": f"no live connection {connection_id}"}, 404)
        if action == "reset":
            connection.reset("reset by operator")
        elif IPeer.providedBy(connection.wrappedProtocol):
            connection.wrappedProtocol.close()
        else:
            connection.close()
        return json_response(request, {"node": nodes[0].config.node_id, "id": connection_id, "done": action})


# The dashboard at GET / (netmodels.daemon.dashboard): the page that shows this live.
_DASHBOARD = Dashboard()


class _NotFound(Resource):
    isLeaf = True

    def __init__(self, error: str) -> None:
        super().__init__()
        self._error = error

    def render(self, request: Request) -> bytes:
        return json_response(request, {"error": self._error}, 404)


class StatusPage(Resource):
    """
    The root: the live page, ``status`` (the first node), ``status/all``,
    ``metrics`` and the operator commands, which need ``admin_token``.
    """

    def __init__(self, nodes: Sequence[Any], admin_token: str | None = None) -> None:
        super().__init__()
        self._nodes = nodes
        status = _StatusDocument(lambda: nodes[0].status())
        status.putChild(b"all", _StatusDocument(lambda: [node.status() for node in nodes]))  # type: ignore[arg-type,return-value]
        status.isLeaf = False
        self.putChild(b"status", status)
        self.putChild(b"connections", _ConnectionCommand(nodes, admin_token))
        self.putChild(b"metrics", MetricsResource(nodes))
        # Routes topologies add (callback's /deliver); the first node's wins a name.
        for node in reversed(nodes):
            for name, resource in node.routes.items():
                self.putChild(name.encode(), resource)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return _NotFound(f"no route /{path.decode('utf-8', 'replace')} on this node")

    def render_GET(self, request: Request) -> bytes:
        return _DASHBOARD.render(request)  # type: ignore[no-any-return]


def status_site(nodes: Sequence[Any], admin_token: str | None = None) -> Site:
    """A ``Site`` serving :class:`StatusPage` for ``nodes`` (the first is ``/status``)."""
    site = Site(StatusPage(nodes, admin_token))
    site.displayTracebacks = False
    return site
