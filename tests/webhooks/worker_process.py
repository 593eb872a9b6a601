"""Delivery workers alone in a process, for the restart test (`python -m tests.webhooks.worker_process`).

Runs the lifecycle service's webhook delivery workers against a database until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.lifecycle.webhooks.wiring import build
from services.runtime.app import build_runtime
from services.runtime.migrations import migrate
from services.runtime.settings import Settings


async def main(database_url: str, var_dir: Path, attempt_timeout: float, lease_margin: float) -> None:
    settings = Settings(
        env="test",
        var_dir=var_dir,
        lifecycle_database_url=database_url,
        webhook_allow_nets=["127.0.0.0/8"],
        webhook_attempt_timeout=attempt_timeout,
        kafka_bootstrap=None,
    )
    runtime = build_runtime("lifecycle", settings)
    await migrate(runtime.engine, "lifecycle")
    workers = build(runtime).workers
    # A short lease, so that the attempts in flight when the process was killed are due soon.
    workers.lease_margin = lease_margin
    await workers.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--var-dir", type=Path, required=True)
    parser.add_argument("--attempt-timeout", type=float, default=2.0)
    parser.add_argument("--lease-margin", type=float, default=0.5)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.database_url, args.var_dir, args.attempt_timeout, args.lease_margin))
    except KeyboardInterrupt:
        sys.exit(0)
