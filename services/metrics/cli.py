"""`partnerhub projections …`: list the KPI projections, rebuild them from the sources' logs.

Both work on the metrics database directly; a running metrics service keeps answering
from the old generation during a rebuild and switches when the rebuild swaps it in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.metrics.app import internal_token
from services.metrics.logs import HttpLogReader, SourceHeads, TokenSource
from services.metrics.ops import consumer_status
from services.metrics.projections import PROJECTIONS
from services.metrics.rebuild import DEFAULT_PAGE_SIZE, Rebuilder, RebuildResult
from services.metrics.rebuild import Progress as RebuildProgress
from services.metrics.writer import ensure_projections, projections_named
from services.runtime.clock import SystemClock
from services.runtime.db import create_engine
from services.runtime.migrations import migrate
from services.runtime.settings import Settings

console = Console()


def _static_token(value: str) -> TokenSource:
    async def token() -> str:
        return value

    return token


def rebuild(
    name: str | None = typer.Argument(None, help=f"one projection ({', '.join(PROJECTIONS)}); all when omitted"),
    token: str | None = typer.Option(
        None, "--token", envvar="PARTNERHUB_LOG_TOKEN",
        help="bearer token with scope events:read (default: the internal client's, PARTNERHUB_INTERNAL_CLIENT_*)",
    ),
    page_size: int = typer.Option(DEFAULT_PAGE_SIZE, min=1, max=10_000, help="events per log API page"),
) -> None:
    """Replay every source's log from position 0 into fresh tables and swap them in atomically."""
    if name is not None and name not in PROJECTIONS:
        raise typer.BadParameter(f"unknown projection {name!r}; one of {', '.join(PROJECTIONS)}", param_hint="NAME")
    settings = Settings()
    source_token = _static_token(token) if token else internal_token(settings)
    if source_token is None:
        console.print(
            "[red]The sources' log APIs need a token:[/] pass --token (scope events:read) or set "
            "PARTNERHUB_INTERNAL_CLIENT_ID and PARTNERHUB_INTERNAL_CLIENT_SECRET."
        )
        raise typer.Exit(2)
    result = asyncio.run(_rebuild(settings, source_token, [name] if name else None, page_size))
    table = Table(title="rebuilt", show_edge=False)
    for column in ("projection", "generation", "events read", "changes", "seconds", "events/s"):
        table.add_column(column, justify="right" if column != "projection" else "left")
    for projection in result.projections:
        table.add_row(
            projection,
            str(result.generations[projection]),
            f"{result.events:,}",
            f"{result.changes:,}",
            f"{result.seconds:.2f}",
            f"{result.events_per_second:,.0f}",
        )
    console.print(table)
    console.print(f"positions per source: {result.positions} (swap attempts: {result.swap_attempts})")


async def _rebuild(settings: Settings, token: TokenSource, names: list[str] | None, page_size: int) -> RebuildResult:
    engine = create_engine(settings.database_url_of("metrics"))
    reader = HttpLogReader(settings, token)
    try:
        await migrate(engine, "metrics")
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10} events/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("reading", total=None, rate="—")

            def on_progress(progress: RebuildProgress) -> None:
                bar.update(
                    task,
                    description=progress.phase,
                    completed=progress.done,
                    total=max(progress.total, progress.done) or None,
                    rate=f"{progress.events_per_second:,.0f}",
                )

            rebuilder = Rebuilder(
                engine,
                reader,
                projections_named(names),
                now=SystemClock().now,
                page_size=page_size,
                on_progress=on_progress,
            )
            return await rebuilder.run()
    finally:
        await reader.aclose()
        await engine.dispose()


def list_projections() -> None:
    """Each projection: generation, when it was rebuilt, positions applied per source, parked events."""
    settings = Settings()
    rows = asyncio.run(_status(settings))
    table = Table(show_edge=False)
    for column in ("projection", "generation", "rebuilt at", "onboarding", "lifecycle", "gateway", "parked"):
        table.add_column(column, no_wrap=column == "projection")
    for consumer in rows:
        by_source = {s["source"]: s for s in consumer["sources"]}

        def cell(source: str, by_source: dict[str, dict[str, Any]] = by_source) -> str:
            entry = by_source[source]
            lag = entry["lag"]
            return f"{entry['position']}" + (f" (lag {lag})" if lag else "")

        table.add_row(
            consumer["projection"],
            str(consumer["generation"]),
            consumer["rebuilt_at"] or "—",
            cell("onboarding"),
            cell("lifecycle"),
            cell("gateway"),
            str(consumer["parked"]),
        )
    console.print(table)


async def _status(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings.database_url_of("metrics"))
    token = internal_token(settings)
    reader = HttpLogReader(settings, token)
    try:
        await migrate(engine, "metrics")
        await ensure_projections(engine)
        heads = await SourceHeads(reader if token is not None else None).get()
        async with engine.connect() as conn:
            return await consumer_status(conn, heads, partitions=settings.kafka_partitions)
    finally:
        await reader.aclose()
        await engine.dispose()


def register(app: typer.Typer) -> None:
    """Add the `projections` command group to the `partnerhub` CLI."""
    group = typer.Typer(help="KPI projections of the metrics service", no_args_is_help=True)
    group.command("rebuild")(rebuild)
    group.command("list")(list_projections)
    app.add_typer(group, name="projections")
