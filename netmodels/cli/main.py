"""
The ``netmodels`` command: one subcommand per operator task, each talking
to a node's status endpoint (``twistd netmodels --status``).

Exit codes: 0 done; 1 the node said no (no such connection, client or
member); 2 a usage error; 3 no node answered at the URL; 4 the node wants
credentials (401, 403). Errors are one line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from netmodels import __version__
from netmodels.cli.client import EXIT_REFUSED, EXIT_USAGE, CommandError, NodeClient, base_url
from netmodels.cli.events import MonitorEvent, changes
from netmodels.cli.render import connections_table, event_line, members_table, status_text
from netmodels.core.reasons import CloseReason

__all__ = ["cli", "main"]


def _checked_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return base_url(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


_url = click.argument("url", callback=_checked_url)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
_node = click.option(
    "--node", metavar="ID", help="The node, when the process runs several (default: the first)."
)


def _token(purpose: str, required: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--token",
        envvar="NETMODELS_TOKEN",
        required=required,
        help=f"{purpose} (or NETMODELS_TOKEN in the environment, which keeps it out of ps).",
    )


_timeout = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the node.",
)


def _node_status(client: NodeClient, node_id: str | None) -> dict[str, Any]:
    """``GET /status``, or the document of ``node_id`` from ``GET /status/all``."""
    if node_id is None:
        document: dict[str, Any] = client.get("/status")
        return document
    for document in client.get("/status/all"):
        if document["node"]["id"] == node_id:
            return dict(document)
    raise CommandError(f"no node {node_id!r} at {client.url}", EXIT_REFUSED)


def _show(document: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """``document`` as JSON for scripts, or as ``text(document)`` for people."""
    click.echo(json.dumps(document, indent=2) if as_json else text(document))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netmodels", message="%(prog)s %(version)s")
def cli() -> None:
    """Operate a running netmodels node through its status endpoint (twistd netmodels --status)."""


@cli.command()
@_url
@_node
@_json
@_timeout
def status(url: str, node: str | None, as_json: bool, timeout: float) -> None:
    """A node's summary: topology, listeners, keepalive, connections, closes, topology sections."""
    document = _node_status(NodeClient(url, timeout), node)
    _show(document, as_json, status_text)


@cli.command()
@_url
@click.option(
    "--reason",
    type=click.Choice([str(reason) for reason in CloseReason]),
    help="Only the connections that ended for this reason.",
)
@click.option("--open", "only_open", is_flag=True, help="Only the connections open now.")
@_node
@_json
@_timeout
def connections(
    url: str, reason: str | None, only_open: bool, node: str | None, as_json: bool, timeout: float
) -> None:
    """Live connections, connect attempts and the recently closed ones, with why each ended."""
    if reason and only_open:
        raise click.UsageError("--reason and --open exclude each other: an open connection has no reason yet")
    records = _node_status(NodeClient(url, timeout), node)["connections"]
    if only_open:
        records = [record for record in records if record["state"] == "open"]
    if reason:
        records = [record for record in records if record["reason"] == reason]
    _show(records, as_json, lambda shown: connections_table(shown, time.time()))


@cli.command()
@_url
@_node
@_json
@_timeout
def members(url: str, node: str | None, as_json: bool, timeout: float) -> None:
    """A p2p node's members: id, state, since, incarnation, connected, last reason."""
    document = _node_status(NodeClient(url, timeout), node)
    if "peers" not in document:
        topology = document["node"]["topology"]
        raise CommandError(f"node {document['node']['id']} runs {topology}: members are p2p's", EXIT_REFUSED)
    _show(document["peers"], as_json, lambda shown: members_table(shown, time.time()))


def _connection_command(action: str, summary: str) -> click.Command:
    @_url
    @click.argument("connection_id", metavar="ID", type=click.IntRange(min=1))
    @_node
    @_token("The node's admin token, from its --admin-token-file")
    @_json
    @_timeout
    def command(
        url: str, connection_id: int, node: str | None, token: str | None, as_json: bool, timeout: float
    ) -> None:
        query = {"node": node} if node else None
        answer = NodeClient(url, timeout, token).post(f"/connections/{connection_id}/{action}", query=query)
        _show(answer, as_json, lambda done: f"{action}: connection {connection_id} on node {done['node']}")

    command.__doc__ = summary
    return click.command(action)(command)


cli.add_command(_connection_command("reset", "End connection ID at once with RST (the peer sees a reset)."))
cli.add_command(
    _connection_command("close", "End connection ID in order: BYE, then FIN (the peer sees clean).")
)


@cli.command()
@_url
@click.argument("client_id", metavar="CLIENT")
@click.argument("message")
@_token("The callback server's --token", required=True)
@_json
@_timeout
def deliver(url: str, client_id: str, message: str, token: str, as_json: bool, timeout: float) -> None:
    """Hand MESSAGE to a callback server for CLIENT: it dials back (port 25) or pushes it."""
    answer = NodeClient(url, timeout, token).post(f"/deliver/{client_id}", message.encode())
    _show(
        answer,
        as_json,
        lambda done: f"accepted message {done['id']} for {done['client']} ({done['depth']} queued)",
    )


@cli.command()
@_url
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@_node
@_json
@_timeout
def monitor(
    url: str, interval: float, count: int | None, node: str | None, as_json: bool, timeout: float
) -> None:
    """
    Follow a node: connections opened and closed (with reason), failed
    connects, p2p member changes, as they happen. Ctrl-C stops it.
    """
    client = NodeClient(url, timeout)
    line: Callable[[MonitorEvent], str] = (
        (lambda event: json.dumps(event.as_dict())) if as_json else event_line
    )
    previous = _node_status(client, node)
    seen = 0
    try:
        while count is None or seen < count:
            time.sleep(interval)
            try:
                current = _node_status(client, node)
            except CommandError as error:
                raise CommandError(f"stopped following: {error}", error.exit_code) from None
            for event in changes(previous, current)[: None if count is None else count - seen]:
                click.echo(line(event))
                seen += 1
            sys.stdout.flush()
            previous = current
    except KeyboardInterrupt:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: runs :data:`cli`, turning every error into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="netmodels", standalone_mode=False)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else "netmodels"
        click.echo(f"{command}: {error.format_message()} (see '{command} --help')", err=True)
        return EXIT_USAGE
    except CommandError as error:
        click.echo(f"netmodels: {error}", err=True)
        return error.exit_code
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except click.Abort:
        return 130
    except click.ClickException as error:
        click.echo(f"netmodels: {error.format_message()}", err=True)
        return error.exit_code
    return 0
