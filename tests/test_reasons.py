"""
Tests for :mod:`netmodels.core.reasons`: the close-reason vocabulary and the
classifiers of lost connections and failed connects.
"""

from __future__ import annotations

import errno

from twisted.internet import error
from twisted.trial.unittest import SynchronousTestCase

from netmodels.core.reasons import ERRNO_REASONS, CloseReason, Closure, Initiator, errno_name
from netmodels.runtime.classify import classify_connect_failure, classify_connection_lost

#: An errno number no platform uses.
UNKNOWN_ERRNO = 99999

#: What each errno means, written out: the contract ERRNO_REASONS must keep.
EXPECTED_ERRNO_REASONS = {
    "ECONNRESET": (CloseReason.RESET, Initiator.REMOTE),
    "EPIPE": (CloseReason.RESET, Initiator.REMOTE),
    "ECONNABORTED": (CloseReason.RESET, Initiator.REMOTE),
    "ETIMEDOUT": (CloseReason.TIMEOUT, Initiator.LOCAL),
    "EHOSTUNREACH": (CloseReason.UNREACHABLE, Initiator.REMOTE),
    "ENETUNREACH": (CloseReason.UNREACHABLE, Initiator.REMOTE),
    "EHOSTDOWN": (CloseReason.UNREACHABLE, Initiator.REMOTE),
    "ENETDOWN": (CloseReason.UNREACHABLE, Initiator.REMOTE),
    "ECONNREFUSED": (CloseReason.REFUSED, Initiator.REMOTE),
}


class VocabularyTests(SynchronousTestCase):
    """The string values are netmodels' public contract."""

    def test_close_reason_values(self) -> None:
        """CloseReason has exactly these eight values, in this order."""
        self.assertEqual(
            [reason.value for reason in CloseReason],
            [
                "clean",
                "reset",
                "aborted",
                "refused",
                "timeout",
                "unreachable",
                "protocol-error",
                "rejected",
            ],
        )

    def test_close_reasons_are_strings(self) -> None:
        """A CloseReason is its string value (for JSON and logs)."""
        self.assertEqual(CloseReason.PROTOCOL_ERROR, "protocol-error")
        self.assertEqual(str(CloseReason.PROTOCOL_ERROR), "protocol-error")

    def test_initiator_values(self) -> None:
        """Initiator has exactly the values local and remote."""
        self.assertEqual([i.value for i in Initiator], ["local", "remote"])


class ErrnoNameTests(SynchronousTestCase):
    """errno_name turns errno numbers into their symbolic names."""

    def test_known_number(self) -> None:
        """A known errno number gives its name."""
        self.assertEqual(errno_name(errno.ECONNRESET), "ECONNRESET")

    def test_none(self) -> None:
        """No errno gives no name."""
        self.assertIsNone(errno_name(None))

    def test_unknown_number(self) -> None:
        """An unknown errno number gives no name."""
        self.assertIsNone(errno_name(UNKNOWN_ERRNO))


class ErrnoTableTests(SynchronousTestCase):
    """Every errno the classifiers know, entry by entry, through both classifiers."""

    def test_table_is_the_expected_one(self) -> None:
        """ERRNO_REASONS has exactly the expected entries: none missing, none extra, none changed."""
        self.assertEqual(
            {errno_name(number): meaning for number, meaning in ERRNO_REASONS.items()}, EXPECTED_ERRNO_REASONS
        )

    def test_connection_lost_by_errno(self) -> None:
        """A lost connection with each errno (captured, or its OSError's) is classified as the table says."""
        for name, (reason, initiator) in EXPECTED_ERRNO_REASONS.items():
            number = getattr(errno, name)
            expected = (reason, initiator, name)
            captured = classify_connection_lost(error.ConnectionLost(), number)
            self.assertEqual((captured.reason, captured.initiator, captured.errno), expected, name)
            raised = classify_connection_lost(OSError(number, name), None)
            self.assertEqual((raised.reason, raised.initiator, raised.errno), expected, name)

    def test_connect_failure_by_errno(self) -> None:
        """A failed connect with each errno (osError, or its OSError's) is classified as the table says."""
        for name, (reason, initiator) in EXPECTED_ERRNO_REASONS.items():
            number = getattr(errno, name)
            expected = (reason, initiator, name)
            wrapped = classify_connect_failure(error.ConnectError(number, name))
            self.assertEqual((wrapped.reason, wrapped.initiator, wrapped.errno), expected, name)
            raised = classify_connect_failure(OSError(number, name))
            self.assertEqual((raised.reason, raised.initiator, raised.errno), expected, name)

    def test_other_errnos_fall_to_the_defaults(self) -> None:
        """Any errno outside the table: a lost connection is a reset, a failed connect unreachable."""
        for number, name in sorted(errno.errorcode.items()):
            if name in EXPECTED_ERRNO_REASONS or number in ERRNO_REASONS:
                continue
            lost = classify_connection_lost(error.ConnectionLost(), number)
            self.assertEqual((lost.reason, lost.initiator), (CloseReason.RESET, Initiator.REMOTE), name)
            failed = classify_connect_failure(OSError(number, name))
            self.assertEqual(
                (failed.reason, failed.initiator), (CloseReason.UNREACHABLE, Initiator.REMOTE), name
            )


class ConnectionLostTests(SynchronousTestCase):
    """classify_connection_lost for established connections."""

    def test_connection_done_is_clean(self) -> None:
        """ConnectionDone (a FIN) is a clean close by the remote side."""
        self.assertEqual(
            classify_connection_lost(error.ConnectionDone(), None),
            Closure(CloseReason.CLEAN, Initiator.REMOTE),
        )

    def test_connection_aborted_is_local_abort(self) -> None:
        """ConnectionAborted (our own abortConnection) is aborted, locally."""
        self.assertEqual(
            classify_connection_lost(error.ConnectionAborted(), None),
            Closure(CloseReason.ABORTED, Initiator.LOCAL),
        )

    def test_aborted_wins_over_errno(self) -> None:
        """Our own abort stays aborted even if a socket errno was captured."""
        closure = classify_connection_lost(error.ConnectionAborted(), errno.ECONNRESET)
        self.assertEqual(closure.reason, CloseReason.ABORTED)

    def test_econnreset(self) -> None:
        """ConnectionLost with ECONNRESET is a reset by the remote side."""
        closure = classify_connection_lost(error.ConnectionLost(), errno.ECONNRESET)
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.RESET, Initiator.REMOTE, "ECONNRESET"),
        )

    def test_epipe(self) -> None:
        """ConnectionLost with EPIPE is a reset too."""
        closure = classify_connection_lost(error.ConnectionLost(), errno.EPIPE)
        self.assertEqual((closure.reason, closure.errno), (CloseReason.RESET, "EPIPE"))

    def test_etimedout(self) -> None:
        """ConnectionLost with ETIMEDOUT (kernel keepalive) is a local timeout."""
        closure = classify_connection_lost(error.ConnectionLost(), errno.ETIMEDOUT)
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.TIMEOUT, Initiator.LOCAL, "ETIMEDOUT"),
        )

    def test_ehostunreach(self) -> None:
        """ConnectionLost with EHOSTUNREACH is unreachable, from the network."""
        closure = classify_connection_lost(error.ConnectionLost(), errno.EHOSTUNREACH)
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.UNREACHABLE, Initiator.REMOTE, "EHOSTUNREACH"),
        )

    def test_connection_lost_without_errno_is_reset(self) -> None:
        """ConnectionLost with no errno is taken to be a reset (the likeliest cause)."""
        closure = classify_connection_lost(error.ConnectionLost(), None)
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.RESET, Initiator.REMOTE, None),
        )

    def test_os_error_errno_used(self) -> None:
        """An OSError's own errno classifies it when none was captured."""
        closure = classify_connection_lost(ConnectionResetError(errno.ECONNRESET, "reset"), None)
        self.assertEqual((closure.reason, closure.errno), (CloseReason.RESET, "ECONNRESET"))

    def test_tls_error_is_protocol_error(self) -> None:
        """An error from pyOpenSSL is a protocol error by the remote side."""
        tls_error = type("Error", (Exception,), {"__module__": "OpenSSL.SSL"})("bad record")
        closure = classify_connection_lost(tls_error, None)
        self.assertEqual((closure.reason, closure.initiator), (CloseReason.PROTOCOL_ERROR, Initiator.REMOTE))
        self.assertIn("TLS", closure.detail)


class ConnectFailureTests(SynchronousTestCase):
    """classify_connect_failure for failed connect attempts."""

    def test_refused(self) -> None:
        """ConnectionRefusedError is refused by the remote side, ECONNREFUSED."""
        closure = classify_connect_failure(error.ConnectionRefusedError())
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.REFUSED, Initiator.REMOTE, "ECONNREFUSED"),
        )

    def test_tcp_timed_out(self) -> None:
        """TCPTimedOutError is a local timeout, ETIMEDOUT."""
        closure = classify_connect_failure(error.TCPTimedOutError())
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.TIMEOUT, Initiator.LOCAL, "ETIMEDOUT"),
        )

    def test_timeout_error(self) -> None:
        """Twisted's TimeoutError (the connect timeout expired) is a local timeout."""
        closure = classify_connect_failure(error.TimeoutError())
        self.assertEqual((closure.reason, closure.initiator), (CloseReason.TIMEOUT, Initiator.LOCAL))

    def test_dns_lookup_error(self) -> None:
        """A failed DNS lookup is unreachable."""
        closure = classify_connect_failure(error.DNSLookupError("no.such.host"))
        self.assertEqual((closure.reason, closure.initiator), (CloseReason.UNREACHABLE, Initiator.REMOTE))

    def test_no_route(self) -> None:
        """NoRouteError is unreachable."""
        closure = classify_connect_failure(error.NoRouteError())
        self.assertEqual((closure.reason, closure.initiator), (CloseReason.UNREACHABLE, Initiator.REMOTE))

    def test_connect_error_with_ehostunreach(self) -> None:
        """A ConnectError carrying EHOSTUNREACH is unreachable, with that errno name."""
        closure = classify_connect_failure(error.ConnectError(osError=errno.EHOSTUNREACH))
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.UNREACHABLE, Initiator.REMOTE, "EHOSTUNREACH"),
        )

    def test_connect_error_with_econnrefused(self) -> None:
        """A bare ConnectError carrying ECONNREFUSED is refused."""
        closure = classify_connect_failure(error.ConnectError(osError=errno.ECONNREFUSED))
        self.assertEqual((closure.reason, closure.errno), (CloseReason.REFUSED, "ECONNREFUSED"))

    def test_os_error_errno_used(self) -> None:
        """An OSError's own errno classifies a connect failure."""
        closure = classify_connect_failure(OSError(errno.ENETUNREACH, "unreachable"))
        self.assertEqual((closure.reason, closure.errno), (CloseReason.UNREACHABLE, "ENETUNREACH"))

    def test_unknown_failure_is_unreachable(self) -> None:
        """A connect failure with nothing to go on is unreachable."""
        closure = classify_connect_failure(error.ConnectError())
        self.assertEqual(
            (closure.reason, closure.initiator, closure.errno),
            (CloseReason.UNREACHABLE, Initiator.REMOTE, None),
        )
