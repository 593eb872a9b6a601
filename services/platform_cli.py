"""`partnerhub up` (the whole platform on embedded defaults) and other platform commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel

from services.platform import Platform
from services.runtime.settings import SERVICES, Settings

console = Console()


def register(app: typer.Typer) -> None:
    """Add the platform commands to the CLI."""
    app.command()(up)
    app.command()(traces)
    app.command()(demo)


def up(
    services: str = typer.Option(",".join(SERVICES), help="comma-separated services to run"),
) -> None:
    """Run the embedded broker and every service on their default ports; Ctrl-C stops all."""
    settings = Settings()
    chosen = tuple(s.strip() for s in services.split(",") if s.strip())
    platform = Platform(
        var_dir=settings.var_dir,
        ports={s: settings.port_of(s) for s in SERVICES},
        kafka_bootstrap=settings.kafka_bootstrap,
        services=chosen,
    )
    asyncio.run(_run(platform))


async def _run(platform: Platform) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with console.status("starting the broker and the services…"):
            await platform.start()
        _print_welcome(platform)
        while not stop.is_set():
            for entry in platform.processes.values():
                if entry.process.poll() is not None:
                    console.print(f"[red]{entry.name} exited ({entry.process.returncode}); see {platform.var_dir}/logs/{entry.name}.log")
                    stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        with console.status("stopping…"):
            await platform.stop()
        console.print("[green]partnerhub stopped; data kept under", str(platform.var_dir))


def _first_ops_client(platform: Platform) -> dict[str, str]:
    path = Path(platform.var_dir) / "ops-client.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    doc = platform.create_client("--ops", "ops")
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return doc


def _print_welcome(platform: Platform) -> None:
    gateway = platform.url("gateway")
    client = _first_ops_client(platform)
    lines = [
        f"[bold]gateway[/]     {gateway}   (API docs {gateway}/docs)",
        *(f"[bold]{s:<11}[/] {platform.url(s)}" for s in platform.services if s != "gateway"),
        f"[bold]broker[/]      {platform.kafka_bootstrap}",
        f"[bold]dashboard[/]   {gateway}/dashboard",
        f"[bold]traces[/]      partnerhub traces --last 5   (spans in {platform.var_dir}/traces/)",
        "",
        f"[bold]first ops client[/] (kept in {Path(platform.var_dir) / 'ops-client.json'})",
        f"  client_id     {client['client_id']}",
        f"  client_secret {client['client_secret']}",
        "",
        "[bold]try it[/]",
        f"  TOKEN=$(curl -s -u '{client['client_id']}:{client['client_secret']}' -d grant_type=client_credentials {gateway}/oauth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f"  curl -s -H \"Authorization: Bearer $TOKEN\" {gateway}/v1/partners",
        "",
        "Ctrl-C stops everything.",
    ]
    console.print(Panel("\n".join(lines), title="partnerhub is up", expand=False))


def traces(
    last: int = typer.Option(5, "--last", help="show the N most recent traces"),
    trace_id: str | None = typer.Option(None, "--trace-id", help="show one trace"),
) -> None:
    """Print recorded traces (spans under var/traces/) as trees with durations."""
    from services import traces as spans_io

    settings = Settings()
    grouped = spans_io.group_traces(spans_io.load_spans(settings.traces_path))
    if not grouped:
        console.print(f"no spans recorded under {settings.traces_path}")
        raise typer.Exit(1)
    if trace_id is not None:
        if trace_id not in grouped:
            console.print(f"[red]no trace {trace_id}")
            raise typer.Exit(1)
        chosen = [trace_id]
    else:
        chosen = spans_io.latest(grouped, last)
    for tid in chosen:
        console.print(spans_io.render(tid, grouped[tid]))


def demo(
    gateway: str | None = typer.Option(None, help="gateway URL (default: this machine's)"),
    client_id: str | None = typer.Option(None, help="ops client id (default: var/ops-client.json)"),
    client_secret: str | None = typer.Option(None, help="ops client secret"),
    wait: float = typer.Option(150.0, help="seconds to wait for every KPI to have data"),
) -> None:
    """Drive a realistic partner portfolio through the public API and print the KPIs."""
    from services.demo import run_demo

    settings = Settings()
    if client_id is None or client_secret is None:
        path = Path(settings.var_dir) / "ops-client.json"
        if not path.exists():
            console.print("[red]no ops client: run `make up` first or pass --client-id/--client-secret")
            raise typer.Exit(1)
        doc = json.loads(path.read_text())
        client_id, client_secret = doc["client_id"], doc["client_secret"]
    asyncio.run(run_demo(gateway or settings.url_of("gateway"), client_id, client_secret, wait=wait))
