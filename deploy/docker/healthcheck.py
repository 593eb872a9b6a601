"""Container health probe: GET /healthz of the partnerhub service running in this container.

Slim images carry no curl, so the image's HEALTHCHECK runs this with the standard library.
With no argument the service (and any `--port`) is read from PID 1's command line
(`partnerhub serve <service> [--port N]`) and the port resolved by `Settings` exactly as
`partnerhub serve` does. An explicit URL may be given instead: `healthcheck.py URL`.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path


def url_from_command_line(argv: list[str]) -> str:
    """The /healthz URL of `partnerhub serve <service> [--port N]` given as argv."""
    if "serve" not in argv:
        raise RuntimeError("PID 1 is not `partnerhub serve <service>`; pass a URL")
    service = argv[argv.index("serve") + 1]
    port: int | str | None = None
    for index, arg in enumerate(argv):
        if arg == "--port":
            port = argv[index + 1]
        elif arg.startswith("--port="):
            port = arg.split("=", 1)[1]
    if port is None:
        from services.runtime.settings import Settings

        port = Settings().port_of(service)
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    if len(sys.argv) > 1:
        url = sys.argv[1]
    else:
        url = url_from_command_line(Path("/proc/1/cmdline").read_bytes().decode().split("\0"))
    with urllib.request.urlopen(url, timeout=4) as response:
        return 0 if response.status == 200 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
