"""
What encryption costs: netmodels against netmodels, cleartext, Noise and TLS, same load, one run.

plain : default netmodels nodes on tcp: endpoints.
noise : the same with a cluster key (--cluster-key-file): the Noise XXpsk0
        handshake, then every frame sealed with AES-256-GCM.
tls   : the same over TLS: an ssl: server endpoint with a self-signed
        certificate, a tls: client endpoint that verifies it.

Workloads:

rr     : one connection, 32-byte requests, one in flight (closed loop), both
         ends on one CPU (as benchmarks/rr.py); round trips per second and
         the latency of each, measured by the client. rr-2cpu: the same with
         each end on its own CPU.
ingest : one connection, the client sends 64-byte one-way messages in
         bursts of 64 per reactor turn while the session is writable; the
         server counts what its application receives per second. Ends on
         two CPUs.

    python benchmarks/secure.py [--seconds 2] [--reps 3]

Instructions instead of time (deterministic, whatever else runs on the
machine; needs valgrind): a client and a server node in one process on
loopback, instructions per round trip counted by callgrind, each mode under
several PYTHONHASHSEED values (memory layouts):

    python benchmarks/secure.py --count-instructions [--modes plain,noise] [--hash-seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import os
import sys
import tempfile
import time
from typing import Any

import common
from common import Row

MODES = ("plain", "noise", "tls")
WORKLOADS = ("rr", "rr-2cpu", "ingest")
RR_PAYLOAD = b"p" * 32
INGEST_PAYLOAD = b"i" * 64
BURST = 64


# --------------------------------------------------------------------------
# Keys and certificates (made once per run by the parent)


def make_credentials(directory: str) -> dict[str, str]:
    """A cluster key and a self-signed certificate for 127.0.0.1, as files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key_path = os.path.join(directory, "cluster.key")
    with open(key_path, "w") as file:
        file.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common.HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(common.HOST))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    trust = os.path.join(directory, "trust")
    os.mkdir(trust)
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    for path in (os.path.join(directory, "server.pem"), os.path.join(trust, "server.pem")):
        with open(path, "wb") as file:
            file.write(pem)
    with open(os.path.join(directory, "server.key"), "wb") as file:
        file.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return {"key": key_path, "directory": directory}


def _config(mode: str, credentials: str, **fields: Any) -> Any:
    from netmodels.runtime.node import NodeConfig
    from netmodels.runtime.secure import read_keyring

    if mode == "noise":
        fields["cluster_keys"] = read_keyring("cluster-key-file", os.path.join(credentials, "cluster.key"))
    return NodeConfig(**fields)


def _listen(mode: str, credentials: str) -> str:
    if mode == "tls":
        key, certificate = (os.path.join(credentials, name) for name in ("server.key", "server.pem"))
        return f"ssl:0:interface={common.HOST}:privateKey={key}:certKey={certificate}"
    return f"tcp:0:interface={common.HOST}"


def _connect(mode: str, credentials: str, port: int) -> str:
    if mode == "tls":
        return f"tls:{common.HOST}:{port}:trustRoots={os.path.join(credentials, 'trust')}"
    return f"tcp:{common.HOST}:{port}"


# --------------------------------------------------------------------------
# Processes


def serve(workload: str, mode: str, credentials: str, warmup: float, seconds: float) -> None:
    common.quiet_logging()
    from netmodels.runtime.node import Node
    from netmodels.topologies.client_server import ClientServer, EchoApplication
    from twisted.internet import reactor

    counter = [0]
    window = common.Window(reactor, warmup, seconds, lambda: counter[0], lambda r: common.emit("RESULT", r))

    class Counting(EchoApplication):
        def peer_ready(self, peer: Any) -> None:
            window.begin()

        def request_received(self, peer: Any, payload: bytes) -> bytes:
            counter[0] += 1
            return payload

        def message_received(self, peer: Any, payload: bytes) -> None:
            counter[0] += 1

    config = _config(mode, credentials, role="server", listen=(_listen(mode, credentials),), node_id="server")
    node = Node(config, ClientServer(), Counting(config), reactor)
    node.build()
    node.startService()
    common.emit("READY", str(node.listeners[0].port.getHost().port))
    reactor.run()


def client(workload: str, mode: str, credentials: str, port: int, warmup: float, seconds: float) -> None:
    common.quiet_logging()
    from netmodels.runtime.application import Application
    from netmodels.runtime.node import Node
    from netmodels.topologies.client_server import ClientServer
    from twisted.internet import reactor

    perf_counter = time.perf_counter
    state = {"count": 0, "sent_at": 0.0}
    samples: list[float] = []

    def finished(result: dict[str, Any]) -> None:
        common.emit_latencies(result, samples)
        if workload != "ingest":
            reactor.stop()

    window = common.Window(reactor, warmup, seconds, lambda: state["count"], finished)

    class RoundTrips(Application):
        peer: Any = None

        def peer_ready(self, peer: Any) -> None:
            self.peer = peer
            window.begin()
            self.send_next()

        def send_next(self) -> None:
            state["sent_at"] = perf_counter()
            self.peer.request(RR_PAYLOAD).addCallbacks(self.answered, self.failed)

        def answered(self, reply: bytes) -> None:
            if window.measuring:
                samples.append(perf_counter() - state["sent_at"])
            state["count"] += 1
            self.send_next()

        def failed(self, failure: Any) -> None:
            print(f"request failed: {failure.getErrorMessage()}", file=sys.stderr)

    class Bursts(Application):
        """Sends BURST messages per reactor turn while the session is writable."""

        peer: Any = None

        def peer_ready(self, peer: Any) -> None:
            self.peer = peer
            window.begin()
            self.burst()

        def burst(self) -> None:
            peer = self.peer
            if peer.writable:
                send = peer.send
                for _ in range(BURST):
                    send(INGEST_PAYLOAD)
                state["count"] += BURST
            reactor.callLater(0, self.burst)

    application = Bursts() if workload == "ingest" else RoundTrips()
    config = _config(
        mode,
        credentials,
        role="client",
        connect=(_connect(mode, credentials, port),),
        node_id="client",
        interval=0,
    )
    node = Node(config, ClientServer(), application, reactor)
    node.build()
    node.startService()
    reactor.run()


# --------------------------------------------------------------------------
# Instructions per round trip (deterministic, for callgrind)


def in_process(mode: str, credentials: str, round_trips: int) -> None:
    """
    A server and a client node in this one process and reactor, on loopback:
    ``round_trips`` request/response round trips of the rr workload, then stop.
    """
    common.quiet_logging()
    from netmodels.runtime.application import Application
    from netmodels.runtime.node import Node
    from netmodels.topologies.client_server import ClientServer, EchoApplication
    from twisted.internet import reactor

    server_config = _config(
        mode, credentials, role="server", listen=(_listen(mode, credentials),), node_id="server"
    )
    server = Node(server_config, ClientServer(), EchoApplication(server_config), reactor)
    server.build()
    server.startService()
    port = server.listeners[0].port.getHost().port
    left = [round_trips]

    class RoundTrips(Application):
        peer: Any = None

        def peer_ready(self, peer: Any) -> None:
            self.peer = peer
            self.send_next()

        def send_next(self) -> None:
            self.peer.request(RR_PAYLOAD).addCallbacks(self.answered, self.failed)

        def answered(self, reply: bytes) -> None:
            left[0] -= 1
            if left[0] > 0:
                self.send_next()
            else:
                reactor.stop()

        def failed(self, failure: Any) -> None:
            print(f"request failed: {failure.getErrorMessage()}", file=sys.stderr)
            reactor.stop()

    client_config = _config(
        mode,
        credentials,
        role="client",
        connect=(_connect(mode, credentials, port),),
        node_id="client",
        interval=0,
    )
    client_node = Node(client_config, ClientServer(), RoundTrips(), reactor)
    client_node.build()
    client_node.startService()
    reactor.run()
    if left[0]:
        raise SystemExit(f"{mode}: {left[0]} round trips not done")


#: Two runs whose difference is the measured round trips: startup, imports
#: and handshakes cancel out.
COUNT_BASE = 1_000
COUNT_MEASURED = 4_000


def count_instructions(modes: list[str], keep: str | None, hash_seeds: list[str]) -> None:
    """
    Instructions per round trip under ``valgrind --tool=callgrind``, which
    the machine's load does not disturb: each mode runs :func:`in_process`
    with COUNT_BASE and COUNT_BASE + COUNT_MEASURED round trips, and the
    difference is divided by COUNT_MEASURED.

    Once per ``PYTHONHASHSEED`` in ``hash_seeds``: each seed lays the
    interpreter's objects out differently, and CPython's attribute lookups
    that are not specialised go through a cache indexed by addresses, whose
    collisions move a round trip by a few thousand instructions. With
    ``keep``, the callgrind files stay in that folder for ``callgrind_annotate``.
    """
    import re
    import shutil
    import statistics
    import subprocess

    if shutil.which("valgrind") is None:
        raise SystemExit("--count-instructions needs valgrind (apt-get install valgrind)")
    directory = tempfile.mkdtemp(prefix="netmodels-bench-secure-")
    make_credentials(directory)
    output = keep or directory
    os.makedirs(output, exist_ok=True)
    per_round_trip: dict[str, dict[str, float]] = {mode: {} for mode in modes}
    for seed in hash_seeds:
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        for mode in modes:
            counts = []
            for round_trips in (COUNT_BASE, COUNT_BASE + COUNT_MEASURED):
                common.progress(
                    f"secure: callgrind, {mode}, {round_trips} round trips, PYTHONHASHSEED={seed}"
                )
                name = f"callgrind.{mode}.seed{seed}.{round_trips}"
                command = [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={os.path.join(output, name)}",
                    *common.python_command(
                        "secure.py",
                        "in-process",
                        "--mode",
                        mode,
                        "--credentials",
                        directory,
                        "--round-trips",
                        str(round_trips),
                    ),
                ]
                done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
                collected = re.search(r"Collected : (\d+)", done.stderr)
                if done.returncode or collected is None:
                    raise SystemExit(f"callgrind run failed ({mode}, {round_trips}):\n{done.stderr[-2000:]}")
                counts.append(int(collected.group(1)))
            per_round_trip[mode][seed] = (counts[1] - counts[0]) / COUNT_MEASURED
    print(
        "instructions per round trip (valgrind --tool=callgrind, client and server in one process on "
        f"loopback, {COUNT_MEASURED} round trips; k = 1,000)"
    )
    print(f"  {'mode':6} " + " ".join(f"{'seed ' + seed:>11}" for seed in hash_seeds) + "      median")
    medians = {mode: statistics.median(by_seed.values()) for mode, by_seed in per_round_trip.items()}
    for mode, by_seed in per_round_trip.items():
        cells = " ".join(f"{by_seed[seed] / 1000:9.1f} k" for seed in hash_seeds)
        print(f"  {mode:6} {cells} {medians[mode] / 1000:9.1f} k")
    plain = per_round_trip.get("plain")
    if plain:
        for mode, by_seed in per_round_trip.items():
            if mode == "plain":
                continue
            ratios = " ".join(f"{plain[seed] / by_seed[seed]:10.2f}x" for seed in hash_seeds)
            of_medians = medians["plain"] / medians[mode]
            print(
                f"  {mode} / plain, round trips per instruction: {ratios}; of the medians {of_medians:.2f}x"
            )
    if keep:
        print(f"callgrind files: {keep} (callgrind.MODE.seedSEED.ROUNDTRIPS)")


# --------------------------------------------------------------------------
# Orchestration


def run_once(workload: str, mode: str, args: argparse.Namespace, credentials: str) -> dict[str, Any]:
    if workload == "rr":
        server_cpu = client_cpu = common.server_cpu()
    else:
        # rr-2cpu and ingest: each end on its own CPU.
        server_cpu, client_cpu = common.server_cpu(), common.client_cpu()
    common_args = ["--workload", workload, "--mode", mode, "--credentials", credentials]
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    with common.Children() as children:
        server = children.start(
            f"secure {workload} {mode} server",
            common.pinned(common.python_command("secure.py", "server", *common_args, *timing), server_cpu),
        )
        port = server.expect("READY", 30)
        sender = children.start(
            f"secure {workload} {mode} client",
            common.pinned(
                common.python_command("secure.py", "client", *common_args, "--port", port, *timing),
                client_cpu,
            ),
        )
        result = sender.result(args.warmup + args.seconds + 30)
        result["server"] = server.result(args.warmup + args.seconds + 30)
    return result


def disturbed(workload: str, result: dict[str, Any]) -> str | None:
    server = result["server"]
    if workload == "rr":
        busy = result["cpu_util"] + server["cpu_util"]
        return None if busy >= 0.9 else f"client + server used only {busy:.0%} of their CPU"
    wait = max(result["runq_wait"], server["runq_wait"])
    return None if wait <= 0.03 else f"waited for a CPU {wait:.0%} of the window"


def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    directory = tempfile.mkdtemp(prefix="netmodels-bench-secure-")
    make_credentials(directory)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(w, m): [] for w in WORKLOADS for m in MODES}
    log: list[str] = []
    for rep in range(args.reps):
        for workload in WORKLOADS:
            for mode in MODES:
                label = f"secure rep {rep + 1}/{args.reps}: {workload} {mode}"
                common.progress(label)
                results[workload, mode].append(
                    common.measured(
                        lambda w=workload, m=mode: run_once(w, m, args, directory),
                        lambda r, w=workload: disturbed(w, r),
                        args.retries,
                        label,
                        log,
                    )
                )

    def series(workload: str, mode: str, key: str, side: str = "client") -> list[float]:
        return [(r if side == "client" else r["server"])[key] for r in results[workload, mode]]

    rows: list[Row] = []
    for mode, target in (("noise", (">=", 0.80)), ("tls", None)):
        rows += [
            Row(
                f"rr: round trips/s, {mode} vs plain",
                "RTT/s",
                series("rr", "plain", "rate"),
                series("rr", mode, "rate"),
                target,
                raw_label="plain",
                nm_label=mode,
            ),
            Row(
                f"rr, ends on two CPUs: round trips/s, {mode} vs plain",
                "RTT/s",
                series("rr-2cpu", "plain", "rate"),
                series("rr-2cpu", mode, "rate"),
                raw_label="plain",
                nm_label=mode,
            ),
            Row(
                f"rr: latency p50, {mode} vs plain",
                "µs",
                series("rr", "plain", "p50_us"),
                series("rr", mode, "p50_us"),
                raw_label="plain",
                nm_label=mode,
            ),
            Row(
                f"ingest: messages/s received, {mode} vs plain",
                "msg/s",
                series("ingest", "plain", "rate", "server"),
                series("ingest", mode, "rate", "server"),
                raw_label="plain",
                nm_label=mode,
            ),
            Row(
                f"ingest: server CPU per message, {mode} vs plain",
                "µs",
                series("ingest", "plain", "cpu_us_per_op", "server"),
                series("ingest", mode, "cpu_us_per_op", "server"),
                raw_label="plain",
                nm_label=mode,
            ),
        ]
    notes = [
        "plain = cleartext netmodels; noise = --cluster-key-file (Noise XXpsk0, AES-256-GCM records); "
        "tls = ssl:/tls: endpoints, a self-signed certificate the client verifies",
        "rr: 32 B requests, one in flight, both ends on one CPU (rr, ends on two CPUs: the same, "
        "informational); ingest: 64 B one-way messages in bursts "
        f"of {BURST} per reactor turn, ends on two CPUs, counted at the server",
        "target: encrypted request/response >= 0.8x plaintext (docs/security.rst)",
        *(_switches(mode, results["rr", mode]) for mode in MODES),
        *log,
    ]
    return rows, notes


def _switches(mode: str, runs: list[dict[str, Any]]) -> str:
    """
    The context switches per round trip of each rr repetition (client +
    server, voluntary/involuntary): with both ends on one CPU, whether the
    scheduler lets a writer run on to its next wait or preempts it for the
    peer it woke shows here, and moves the rate more than the code does.
    """

    def per_round_trip(run: dict[str, Any], key: str) -> float:
        return float(run[key] or 0) + float(run["server"][key] or 0)

    cells = ", ".join(
        f"{run['rate'] / 1000:.1f} k/s {per_round_trip(run, 'vcsw_per_op'):.1f}/"
        f"{per_round_trip(run, 'ivcsw_per_op'):.1f}"
        for run in runs
    )
    return (
        f"rr {mode}, each repetition: round trips/s, context switches per round trip (vol./invol.): {cells}"
    )


COLUMNS = ("plain median", "encrypted median")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    for name in ("server", "client"):
        p = sub.add_parser(name)
        p.add_argument("--workload", choices=WORKLOADS, required=True)
        p.add_argument("--mode", choices=MODES, required=True)
        p.add_argument("--credentials", required=True)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--seconds", type=float, default=2.0)
        if name == "client":
            p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("in-process")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--credentials", required=True)
    p.add_argument("--round-trips", type=int, required=True)
    common.add_common_arguments(parser)
    parser.add_argument(
        "--count-instructions",
        action="store_true",
        help="instead of timing: instructions per round trip of each mode under callgrind (needs valgrind)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="with --count-instructions: which modes (default all)"
    )
    parser.add_argument(
        "--hash-seeds",
        default="0,1,2",
        help="with --count-instructions: PYTHONHASHSEED values, one memory layout each (default 0,1,2)",
    )
    parser.add_argument(
        "--callgrind-dir", default=None, help="with --count-instructions: keep the callgrind files here"
    )
    args = parser.parse_args()
    if args.command == "in-process":
        in_process(args.mode, args.credentials, args.round_trips)
    elif args.count_instructions:
        count_instructions(
            [m.strip() for m in args.modes.split(",") if m.strip()],
            args.callgrind_dir,
            [seed.strip() for seed in args.hash_seeds.split(",") if seed.strip()],
        )
    elif args.command == "server":
        serve(args.workload, args.mode, args.credentials, args.warmup, args.seconds)
    elif args.command == "client":
        client(args.workload, args.mode, args.credentials, args.port, args.warmup, args.seconds)
    else:
        common.apply_quick(args)
        rows, notes = run(args)
        print(common.format_table("encrypted sessions: noise and tls against plain", rows, notes, COLUMNS))


if __name__ == "__main__":
    main()
