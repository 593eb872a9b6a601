"""`partnerhub client …` and `partnerhub keys …`: work on the gateway's database directly.

They need no running gateway (a running one picks changes up within seconds), so
`make up` and test fixtures can make the first ops client before anything serves HTTP.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import typer

from events.envelope import EventMetadata
from events.store import EventStore
from services.gateway.clients import (
    DEFAULT_PARTNER_SCOPES,
    OPS_SCOPES,
    ClientError,
    ClientRecord,
    ClientRegistry,
    SecretHasher,
    load_pepper,
)
from services.runtime.clock import SystemClock
from services.runtime.db import create_engine
from services.runtime.migrations import migrate
from services.runtime.settings import Settings

CLI_ACTOR = EventMetadata(actor="partnerhub-cli")


@asynccontextmanager
async def _registry(settings: Settings) -> AsyncIterator[ClientRegistry]:
    engine = create_engine(settings.database_url_of("gateway"))
    try:
        await migrate(engine, "gateway")
        store = EventStore(engine, source="gateway", now=SystemClock().now, group_commit=False)
        hasher = SecretHasher(await load_pepper(engine, settings.secret_pepper))
        yield ClientRegistry(store, hasher)
    finally:
        await engine.dispose()


def create(
    ops: str | None = typer.Option(None, "--ops", metavar="NAME", help="make an ops client (all scopes, incl. admin) named NAME"),
    partner_id: str | None = typer.Option(None, "--partner-id", metavar="ID", help="make a client for partner ID"),
    scopes: list[str] | None = typer.Option(
        None, "--scopes", help="scopes (repeat the option, or separate by spaces/commas); default: all for ops, the partner set otherwise"
    ),
    name: str | None = typer.Option(None, "--name", help="display name of a partner client"),
    jwks: Path | None = typer.Option(None, "--jwks", exists=True, dir_okay=False, help="public JWK Set file enabling private_key_jwt"),
    as_json: bool = typer.Option(False, "--json", help='print only {"client_id", "client_secret", "scopes"}'),
) -> None:
    """Register a client; its secret is printed this once."""
    if (ops is None) == (partner_id is None):
        raise typer.BadParameter("give exactly one of --ops NAME or --partner-id ID")
    chosen = scopes or list(OPS_SCOPES if ops is not None else DEFAULT_PARTNER_SCOPES)
    keyset: dict[str, Any] | None = json.loads(jwks.read_text()) if jwks is not None else None

    async def run() -> tuple[ClientRecord, str]:
        async with _registry(Settings()) as registry:
            return await registry.create(
                name=ops if ops is not None else (name or f"partner {partner_id}"),
                scopes=chosen,
                partner_id=partner_id,
                jwks=keyset,
                metadata=CLI_ACTOR,
            )

    try:
        record, secret = asyncio.run(run())
    except ClientError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        sys.stdout.write(json.dumps({"client_id": record.client_id, "client_secret": secret, "scopes": list(record.scopes)}) + "\n")
        return
    from rich.console import Console

    console = Console()
    console.print(f"[bold]client_id[/]     {record.client_id}")
    console.print(f"[bold]client_secret[/] {secret}   [dim](shown once; store it now)[/]")
    console.print(f"[bold]scopes[/]        {' '.join(record.scopes)}")
    if record.partner_id:
        console.print(f"[bold]partner_id[/]    {record.partner_id}")


def list_clients(
    partner_id: str | None = typer.Option(None, "--partner-id", help="only this partner's clients"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
) -> None:
    """List registered clients (never their secrets)."""

    async def run() -> list[ClientRecord]:
        async with _registry(Settings()) as registry:
            found: list[ClientRecord] = []
            after = 0
            while True:
                page = await registry.list(partner_id=partner_id, after_seq=after, limit=500)
                found.extend(page)
                if len(page) < 500:
                    return found
                after = page[-1].seq

    records = asyncio.run(run())
    if as_json:
        for record in records:
            sys.stdout.write(json.dumps(record.public(), default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("client_id", "name", "kind", "partner", "scopes", "created", "status")
    for r in records:
        table.add_row(
            r.client_id, r.name, r.kind, r.partner_id or "", " ".join(r.scopes),
            f"{r.created_at:%Y-%m-%d %H:%M}", "active" if r.active else f"revoked {r.revoked_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)


def rotate_keys() -> None:
    """Make a new signing key; the old one stays published until its last token expires."""
    from services.gateway.keys import rotate

    settings = Settings()

    async def run() -> tuple[str, list[Any]]:
        engine = create_engine(settings.database_url_of("gateway"))
        try:
            await migrate(engine, "gateway")
            return await rotate(engine, now=SystemClock().now(), token_ttl=settings.access_token_ttl)
        finally:
            await engine.dispose()

    kid, keys = asyncio.run(run())
    typer.echo(f"new signing key {kid} (running gateways switch within seconds)")
    for key in keys:
        if key.kid != kid:
            typer.echo(f"  retired {key.kid}: published until {key.publish_until:%Y-%m-%d %H:%M:%S}Z")


def list_keys() -> None:
    """List the signing keys."""
    from services.gateway.keys import list_keys as stored_keys

    settings = Settings()

    async def run() -> list[Any]:
        engine = create_engine(settings.database_url_of("gateway"))
        try:
            await migrate(engine, "gateway")
            return await stored_keys(engine)
        finally:
            await engine.dispose()

    for key in asyncio.run(run()):
        state = "signing" if key.signing else f"retired, published until {key.publish_until:%Y-%m-%d %H:%M:%S}Z"
        typer.echo(f"{key.kid}  created {key.created_at:%Y-%m-%d %H:%M:%S}Z  {state}")


def register(app: typer.Typer) -> None:
    """Add the `client` and `keys` command groups to the `partnerhub` CLI."""
    client = typer.Typer(help="OAuth clients of the gateway", no_args_is_help=True)
    client.command("create")(create)
    client.command("list")(list_clients)
    keys = typer.Typer(help="The gateway's token signing keys", no_args_is_help=True)
    keys.command("rotate")(rotate_keys)
    keys.command("list")(list_keys)
    app.add_typer(client, name="client")
    app.add_typer(keys, name="keys")
