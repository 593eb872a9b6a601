"""`partnerhub up` (what `make up` runs) as a user meets it, and `partnerhub demo` against it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.runtime.settings import SERVICES
from tests.support.platform import free_port, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(int(entry.name))
    return found


async def test_up_serves_everything_and_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    ports = {service: free_port() for service in SERVICES}
    env = dict(os.environ, PARTNERHUB_VAR_DIR=str(var_dir), COLUMNS="250", TERM="dumb")
    env.pop("PARTNERHUB_KAFKA_BOOTSTRAP", None)
    env.update({f"PARTNERHUB_{s.upper()}_PORT": str(p) for s, p in ports.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while not any("Ctrl-C stops everything" in line for line in output):
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line and proc.poll() is not None:
                pytest.fail("partnerhub up exited early:\n" + "".join(output))
            output.append(line)
            assert time.monotonic() < deadline, "partnerhub up did not get ready in time:\n" + "".join(output)
        text = "".join(output)
        client_id = re.search(r"client_id\s+(\S+)", text)
        client_secret = re.search(r"client_secret\s+(\S+)", text)
        broker = re.search(r"broker\s+127\.0\.0\.1:(\d+)", text)
        assert client_id and client_secret and broker, text

        async with httpx.AsyncClient(timeout=10) as http:
            for service, port in ports.items():
                ready = await http.get(f"http://127.0.0.1:{port}/readyz")
                assert ready.status_code == 200, (service, ready.text)
            gateway = f"http://127.0.0.1:{ports['gateway']}"
            token = await http.post(
                gateway + "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client_id.group(1), client_secret.group(1)),
            )
            assert token.status_code == 200, token.text
            listed = await http.get(gateway + "/v1/partners", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
            assert listed.status_code == 200 and "items" in listed.json()
        assert _processes_mentioning(str(var_dir)), "services should be running"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 40)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("partnerhub up did not stop on SIGINT")
    assert proc.returncode == 0
    assert _processes_mentioning(str(var_dir)) == [], "a service outlived Ctrl-C"
    assert _processes_mentioning(f"127.0.0.1:{broker.group(1)}") == [], "the broker outlived Ctrl-C"
    # Restarting keeps the data: the first ops client is reused, not recreated.
    assert (var_dir / "ops-client.json").exists() and (var_dir / "gateway.db").exists()


async def test_demo_gives_every_kpi_a_status(tmp_path: Path) -> None:
    from services.demo import run_demo

    fast = {"PARTNERHUB_TRAFFIC_WINDOW_SECONDS": "5", "PARTNERHUB_PROBE_INTERVAL": "2"}
    async with running_platform(tmp_path, extra_env=fast) as platform:
        doc = await run_demo(platform.gateway, platform.ops.client_id, platform.ops.client_secret, wait=120)
    statuses = {name: kpi["status"] for name, kpi in doc["kpis"].items()}
    assert set(statuses) >= {
        "api_availability",
        "integration_uptime",
        "integration_success_rate",
        "time_to_integration_days",
        "time_to_partnership_days",
        "partner_satisfaction",
        "partner_retention",
        "webhook_delivery_success",
    }
    assert all(status in ("met", "breached") for status in statuses.values()), statuses
