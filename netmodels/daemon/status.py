"""
``GET /status``: a node's state as JSON; ``GET /`` a page that shows it live.

``POST /connections/<id>/reset`` and ``/close`` end one connection with RST,
or with BYE and FIN, for operators (serve the status endpoint on loopback or
behind TLS: it has no authentication of its own).

``POST /deliver/<client>`` (callback topology) hands the request body to the
server's ``deliver``; it needs ``Authorization: Bearer <token>``, the node's
``--token``, and is off when the node has none.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from netmodels.runtime.interfaces import IPeer

__all__ = ["StatusPage", "status_site"]


def _json(request: Request, document: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=1, default=str).encode() + b"\n"


class _StatusDocument(Resource):
    isLeaf = True

    def __init__(self, render_status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._render_status = render_status

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self._render_status())


class _ConnectionCommand(Resource):
    """
    ``POST /connections/<id>/reset`` or ``/close``; ``?node=<node id>`` picks
    the node when one process runs several (the first node by default).
    """

    isLeaf = True

    def __init__(self, nodes: Sequence[Any]) -> None:
        super().__init__()
        self._nodes = nodes

    def render_POST(self, request: Request) -> bytes:
        parts = [part.decode("ascii", "replace") for part in request.postpath or []]
        if len(parts) != 2 or parts[1] not in ("reset", "close") or not parts[0].isdigit():
            return _json(request, {"error": "use POST /connections/<id>/reset or /close"}, 404)
        connection_id, action = int(parts[0]), parts[1]
        wanted = (request.args or {}).get(b"node", [b""])[0].decode("utf-8", "replace")
        nodes = [node for node in self._nodes if node.config.node_id == wanted] if wanted else self._nodes[:1]
        if not nodes:
            return _json(request, {"error": f"no node {wanted!r}"}, 404)
        connection = nodes[0].manager.find(connection_id)
        if connection is None:
            return _json(request, {"error": f"no live connection {connection_id}"}, 404)
        if action == "reset":
            connection.reset("reset by operator")
        elif IPeer.providedBy(connection.wrappedProtocol):
            connection.wrappedProtocol.close()
        else:
            connection.close()
        return _json(request, {"node": nodes[0].config.node_id, "id": connection_id, "done": action})


class _DeliverCommand(Resource):
    """``POST /deliver/<client>``: the body is the message (callback topology)."""

    isLeaf = True

    def __init__(self, nodes: Sequence[Any]) -> None:
        super().__init__()
        self._nodes = nodes

    def render_POST(self, request: Request) -> bytes | int:
        from netmodels.topologies.callback.topology import CallbackServer, callback_of

        servers = [callback_of(node) for node in self._nodes]
        server = next((s for s in servers if isinstance(s, CallbackServer)), None)
        if server is None:
            return _json(request, {"error": "not a callback server"}, 404)
        if server.token is None:
            return _json(request, {"error": "the node has no --token: POST /deliver is off"}, 403)
        offered = request.getHeader(b"authorization") or b""
        if isinstance(offered, str):
            offered = offered.encode()
        if not hmac.compare_digest(offered, f"Bearer {server.token}".encode()):
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, {"error": "missing or wrong bearer token"}, 401)
        parts = request.postpath or []
        if len(parts) != 1 or not parts[0]:
            return _json(request, {"error": "use POST /deliver/<client id> with the message as body"}, 404)
        client_id = parts[0].decode("utf-8", "replace")
        assert request.content is not None
        payload = request.content.read()

        def accepted(message_id: int) -> None:
            document = {"client": client_id, "id": message_id, "depth": server.outbox.depth(client_id)}
            request.write(_json(request, document, 202))
            request.finish()

        def refused(failure: Any) -> None:
            from netmodels.topologies.callback.outbox import OutboxFull, UnknownClient

            code = 404 if failure.check(UnknownClient) else 503 if failure.check(OutboxFull) else 413
            request.write(_json(request, {"client": client_id, "error": str(failure.value)}, code))
            request.finish()

        server.deliver(client_id, payload).addCallbacks(accepted, refused)
        return NOT_DONE_YET


_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>netmodels</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
.open{color:#080}.closed,.failed{color:#888}
.reset,.timeout,.refused,.protocol-error,.rejected{color:#b00}
</style></head><body>
<h1>netmodels <span id="node"></span></h1><p id="keepalive"></p>
<table><thead><tr><th>id</th><th>node</th><th>peer</th><th>peer id</th><th>dir</th><th>state</th>
<th>reason</th><th>initiator</th><th>errno</th><th>msgs in/out</th><th>rtt ms</th><th>detail</th>
</tr></thead><tbody id="rows"></tbody></table>
<p id="counters"></p>
<script>
const esc=t=>String(t??'').replace(/&/g,'&amp;').replace(/</g,'&lt;');
function row(d,c){
 const cells=[c.id,d.node.id,c.peer,c.peer_id,c.direction,c.state,c.reason,c.initiator,c.errno,
  c.messages_in+'/'+c.messages_out,c.rtt==null?'':(c.rtt*1000).toFixed(2),c.detail];
 const tds=cells.map(x=>'<td>'+esc(x)+'</td>').join('');
 return '<tr class="'+esc(c.state)+' '+esc(c.reason)+'">'+tds+'</tr>';
}
async function tick(){
 const docs=await (await fetch('status/all')).json();
 const $=id=>document.getElementById(id);
 $('node').textContent=docs.map(d=>d.node.id+' ('+d.node.topology+' '+d.node.role+')').join(', ');
 $('keepalive').textContent=docs[0].keepalive.describe;
 $('rows').innerHTML=docs.flatMap(d=>d.connections.map(c=>row(d,c))).join('');
 $('counters').textContent=docs.map(d=>d.node.id+': '+JSON.stringify(d.counters)).join('  ');
}
tick();setInterval(tick,1000);
</script></body></html>
"""


class StatusPage(Resource):
    """The root: the live page, ``status`` (the first node) and ``status/all``."""

    def __init__(self, nodes: Sequence[Any]) -> None:
        super().__init__()
        self._nodes = nodes
        status = _StatusDocument(lambda: nodes[0].status())
        status.putChild(b"all", _StatusDocument(lambda: [node.status() for node in nodes]))  # type: ignore[arg-type,return-value]
        status.isLeaf = False
        self.putChild(b"status", status)
        self.putChild(b"connections", _ConnectionCommand(nodes))
        self.putChild(b"deliver", _DeliverCommand(nodes))

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self if path == b"" else super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _PAGE


def status_site(nodes: Sequence[Any]) -> Site:
    """A ``Site`` serving :class:`StatusPage` for ``nodes`` (the first is ``/status``)."""
    site = Site(StatusPage(nodes))
    site.displayTracebacks = False
    return site
