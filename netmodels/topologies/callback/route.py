"""
``POST /deliver/<client>`` on the status endpoint: the request body is a
message for that client. It needs ``Authorization: Bearer <token>``, the
server's ``--token``, and is off when the server has none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from netmodels.runtime.web import json_response, refuse_without_bearer
from netmodels.topologies.callback.outbox import OutboxFull, UnknownClient

if TYPE_CHECKING:
    from netmodels.topologies.callback.server import CallbackServer

__all__ = ["DeliverResource"]


class DeliverResource(Resource):
    """``POST /deliver/<client>``: hands the body to :meth:`CallbackServer.deliver`."""

    isLeaf = True

    def __init__(self, server: CallbackServer) -> None:
        super().__init__()
        self._server = server

    def render_POST(self, request: Request) -> bytes | int:
        server = self._server
        off = "the node has no --token: POST /deliver is off"
        refusal = refuse_without_bearer(request, server.token, off)
        if refusal is not None:
            return refusal
        parts = request.postpath or []
        if len(parts) != 1 or not parts[0]:
            return json_response(
                request, {"error": "use POST /deliver/<client id> with the message as body"}, 404
            )
        client_id = parts[0].decode("utf-8", "replace")
        assert request.content is not None
        payload = request.content.read()

        def accepted(message_id: int) -> None:
            document = {"client": client_id, "id": message_id, "depth": server.outbox.depth(client_id)}
            request.write(json_response(request, document, 202))
            request.finish()

        def refused(failure: Any) -> None:
            code = 404 if failure.check(UnknownClient) else 503 if failure.check(OutboxFull) else 413
            request.write(json_response(request, {"client": client_id, "error": str(failure.value)}, code))
            request.finish()

        server.deliver(client_id, payload).addCallbacks(accepted, refused)
        return NOT_DONE_YET
