"""The status site: GET /status JSON, the live page, and the operator commands."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from netmodels.core.connection import ConnectionState
from netmodels.core.reasons import CloseReason, Initiator
from netmodels.daemon.status import StatusPage
from tests.test_testing import CLIENT_ID, SERVER_ID, Pair

ADMIN_TOKEN = "status-test-admin-token"


def render(
    root: StatusPage,
    method: bytes,
    path: str,
    args: dict[bytes, list[bytes]] | None = None,
    token: str | None = ADMIN_TOKEN,
) -> Any:
    request = DummyRequest([segment.encode() for segment in path.strip("/").split("/")])
    request.method = method
    request.args = args or {}
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    return request.responseCode or 200, body


class StatusSiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.start()
        self.root = StatusPage([self.pair.server, self.pair.client], admin_token=ADMIN_TOKEN)

    def tearDown(self) -> None:
        self.pair.stop()

    def test_status_is_the_first_node(self) -> None:
        """GET /status serves the first node's document as JSON."""
        code, body = render(self.root, b"GET", "/status")
        document = json.loads(body)
        self.assertEqual(code, 200)
        self.assertEqual(document["node"]["id"], SERVER_ID)
        [connection] = document["connections"]
        self.assertEqual((connection["peer_id"], connection["state"]), (CLIENT_ID, "open"))

    def test_status_all_lists_every_node(self) -> None:
        _, body = render(self.root, b"GET", "/status/all")
        self.assertEqual([doc["node"]["id"] for doc in json.loads(body)], [SERVER_ID, CLIENT_ID])

    def test_page_is_html(self) -> None:
        request = DummyRequest([b""])
        body = getChildForRequest(self.root, request).render(request)
        self.assertIn(b'<table id="connections">', body)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )

    def test_close_says_bye(self) -> None:
        """POST /connections/<id>/close ends it with BYE then FIN: the peer records clean/remote."""
        connection_id = self.pair.server_record().id
        code, body = render(self.root, b"POST", f"/connections/{connection_id}/close")
        self.pair.clock.advance(0)
        self.assertEqual((code, json.loads(body)["done"]), (200, "close"))
        client = self.pair.client_record()
        self.assertEqual((client.reason, client.initiator), (CloseReason.CLEAN, Initiator.REMOTE))

    def test_reset_on_a_named_node(self) -> None:
        """?node= picks the node: resetting the client's connection makes the server see reset."""
        connection_id = self.pair.client_record().id
        code, _ = render(
            self.root, b"POST", f"/connections/{connection_id}/reset", {b"node": [CLIENT_ID.encode()]}
        )
        self.pair.clock.advance(0)
        self.assertEqual(code, 200)
        self.assertEqual(self.pair.client_record().reason, CloseReason.ABORTED)
        server = self.pair.server_record()
        self.assertEqual((server.reason, server.errno), (CloseReason.RESET, "ECONNRESET"))

    def test_commands_need_the_admin_token(self) -> None:
        """No token or a wrong one: 401 and nothing happens; a node without an admin token: 403."""
        connection_id = self.pair.server_record().id
        for token in (None, "wrong", ADMIN_TOKEN + "x", ""):
            code, body = render(self.root, b"POST", f"/connections/{connection_id}/reset", token=token)
            self.assertEqual((code, json.loads(body)["error"]), (401, "missing or wrong bearer token"))
        without = StatusPage([self.pair.server])
        code, body = render(without, b"POST", f"/connections/{connection_id}/close")
        self.assertEqual(code, 403)
        self.assertIn("no --admin-token-file", json.loads(body)["error"])
        self.pair.clock.advance(1)
        self.assertEqual(self.pair.server_record().state, ConnectionState.OPEN)

    def test_unknown_connection_or_node_is_404(self) -> None:
        self.assertEqual(render(self.root, b"POST", "/connections/999/reset")[0], 404)
        self.assertEqual(render(self.root, b"POST", "/connections/1/reset", {b"node": [b"nope"]})[0], 404)
        self.assertEqual(render(self.root, b"POST", "/connections/1/explode")[0], 404)
        self.assertEqual(self.pair.server_record().state, ConnectionState.OPEN)
