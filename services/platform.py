"""Run the whole platform as processes: the embedded broker and the four services.

Used by `partnerhub up` and by the end-to-end tests, so that what tests start is
exactly what a user starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from services.runtime.settings import DEFAULT_PORTS, SERVICES

READY_TIMEOUT = 60.0


@dataclass
class ServiceProcess:
    """One service running under uvicorn."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Platform:
    """Broker plus services, started and stopped together."""

    var_dir: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    kafka_bootstrap: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    broker: Any = None

    def __post_init__(self) -> None:
        self.var_dir = self.var_dir.resolve()

    # --- configuration ---------------------------------------------------------------

    def internal_client(self) -> tuple[str, str]:
        """The service-to-service client, kept in var/ so restarts keep using it."""
        path = self.var_dir / "internal-client.json"
        if path.exists():
            doc = json.loads(path.read_text())
            return str(doc["client_id"]), str(doc["client_secret"])
        self.var_dir.mkdir(parents=True, exist_ok=True)
        client_id, secret = "partnerhub-internal", secrets.token_urlsafe(32)
        path.write_text(json.dumps({"client_id": client_id, "client_secret": secret}))
        path.chmod(0o600)
        return client_id, secret

    def env(self) -> dict[str, str]:
        """Environment every service process gets."""
        client_id, secret = self.internal_client()
        env = dict(os.environ)
        env.update(
            {
                "PARTNERHUB_VAR_DIR": str(self.var_dir),
                "PARTNERHUB_HOST": "127.0.0.1",
                "PARTNERHUB_INTERNAL_CLIENT_ID": client_id,
                "PARTNERHUB_INTERNAL_CLIENT_SECRET": secret,
                "PARTNERHUB_WEBHOOK_ALLOW_NETS": env.get("PARTNERHUB_WEBHOOK_ALLOW_NETS", "127.0.0.0/8,::1/128"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for service, port in self.ports.items():
            env[f"PARTNERHUB_{service.upper()}_PORT"] = str(port)
            env.pop(f"PARTNERHUB_{service.upper()}_URL", None)
        if self.kafka_bootstrap:
            env["PARTNERHUB_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        env.update(self.extra_env)
        return env

    def url(self, service: str) -> str:
        """Base URL of `service`."""
        return f"http://127.0.0.1:{self.ports[service]}"

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, *, timeout: float = READY_TIMEOUT) -> None:
        """Start the broker (unless one is given) and every service; wait until all are ready."""
        if self.kafka_bootstrap is None:
            from events.broker import EmbeddedBroker

            self.broker = EmbeddedBroker(log_dir=self.var_dir / "logs")
            await self.broker.start()
            self.kafka_bootstrap = self.broker.bootstrap
        for service in self.services:
            self.start_service(service)
        await self.wait_ready(timeout=timeout)

    def start_service(self, service: str) -> ServiceProcess:
        """Spawn `service` (again)."""
        logs = self.var_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / f"{service}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", service],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[service] = ServiceProcess(service, self.ports[service], process, log)
        return self.processes[service]

    async def wait_ready(self, *, timeout: float = READY_TIMEOUT, services: tuple[str, ...] | None = None) -> None:
        """Wait until every service answers /readyz with 200 (raise on deadline or exit)."""
        deadline = time.monotonic() + timeout
        pending = set(services or self.processes)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending:
                for service in sorted(pending):
                    proc = self.processes[service].process
                    if proc.poll() is not None:
                        raise RuntimeError(f"{service} exited with {proc.returncode}; see {self.var_dir}/logs/{service}.log")
                    try:
                        response = await client.get(self.url(service) + "/readyz")
                        if response.status_code == 200:
                            pending.discard(service)
                    except httpx.HTTPError:
                        pass
                if pending:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not ready within {timeout}s: {', '.join(sorted(pending))}")
                    await asyncio.sleep(0.1)

    def kill_service(self, service: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to `service` and reap it."""
        entry = self.processes.get(service)
        if entry is None:
            return
        if entry.process.poll() is None:
            entry.process.send_signal(sig)
            try:
                entry.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                entry.process.kill()
                entry.process.wait()
        entry.log.close()

    async def stop(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL after a deadline) and the broker."""
        for entry in self.processes.values():
            if entry.process.poll() is None:
                entry.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for entry in self.processes.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(entry.process.wait, remaining)
            except subprocess.TimeoutExpired:
                entry.process.kill()
                await asyncio.to_thread(entry.process.wait)
            entry.log.close()
        self.processes.clear()
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None

    # --- clients ---------------------------------------------------------------------

    def create_client(self, *args: str) -> dict[str, Any]:
        """Run `partnerhub client create ... --json` against this platform's gateway database."""
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", "client", "create", *args, "--json"],
            env=self.env(),
            capture_output=True,
            check=True,
        )
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc
