"""The `partnerhub` command line: run the platform, manage clients, rebuild projections."""

from __future__ import annotations

import importlib

import typer

from services.runtime.settings import SERVICES

app = typer.Typer(help="partnerhub: event-sourced partner-integration platform", no_args_is_help=True)

# Each service may contribute a sub-command group in services/<service>/cli.py (`app`, `name`).
_SERVICE_COMMANDS = ("services.gateway.cli", "services.metrics.cli", "services.platform_cli")


def _register() -> None:
    for module_name in _SERVICE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


@app.command()
def serve(
    service: str = typer.Argument(..., help="gateway | onboarding | lifecycle | metrics"),
    host: str | None = typer.Option(None, help="bind address (default PARTNERHUB_HOST)"),
    port: int | None = typer.Option(None, help="port (default: the service's own)"),
) -> None:
    """Run one service with uvicorn."""
    from services.runtime.server import serve as run
    from services.runtime.settings import Settings

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    settings = Settings()
    run(f"services.{service}.app:create_app", host=host or settings.host, port=port or settings.port_of(service))


def main() -> None:
    """Console-script entry point."""
    _register()
    app()


if __name__ == "__main__":
    main()
