"""`partnerhub serve`'s server: uvicorn, with the heap settled once the service is up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import httpx

from services.runtime.server import GC_GEN0_THRESHOLD
from tests.support.platform import free_port

APP = textwrap.dedent(
    """
    import gc, sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from services.runtime.server import Server

    async def heap(request):
        return JSONResponse({"frozen": gc.get_freeze_count(), "thresholds": list(gc.get_threshold())})

    app = Starlette(routes=[Route("/heap", heap)])
    Server(uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")).run()
    """
)


def test_a_started_service_has_its_startup_heap_frozen_and_collects_the_young_less_often() -> None:
    port = free_port()
    before = subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_freeze_count(), gc.get_threshold()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert before == ["0", "700"]  # CPython's defaults, which the server changes
    process = subprocess.Popen([sys.executable, "-c", APP, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                state = httpx.get(f"http://127.0.0.1:{port}/heap", timeout=2).json()
                break
            except httpx.HTTPError:
                assert process.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.05)
        assert state["frozen"] > 10_000  # uvicorn, Starlette and the rest, out of every collection
        assert state["thresholds"][0] == GC_GEN0_THRESHOLD > int(before[1])
    finally:
        process.terminate()
        process.wait(timeout=15)
