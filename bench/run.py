"""Run every benchmark in bench/ and write docs/performance.md from their JSON results.

Each `bench/bench_<area>.py` is run as `python -m bench.bench_<area>` and writes
`bench/results/<area>.json`: `{"title": str, "command": str, "results": [{"name", "value",
"unit", "goal"?, "peer"?, "ratio"?, "note"?}], "environment": {...}}`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"


def main(argv: list[str]) -> int:
    only = set(argv)
    modules = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    failed = []
    for module in modules:
        area = module.removeprefix("bench_")
        if only and area not in only:
            continue
        print(f"== {module}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{module}"], cwd=ROOT, env=os.environ | {"PARTNERHUB_TRACING": "off"})
        print(f"== {module}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        if code != 0:
            failed.append(module)
    write_doc()
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def write_doc() -> None:
    """Regenerate the measured-figures part of docs/performance.md."""
    sections = []
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        rows = [
            f"| {r.get('name', '')} | {_fmt(r.get('value'))} {r.get('unit', '')} | {_fmt(r.get('peer'))} | "
            f"{_fmt(r.get('ratio'))} | {r.get('goal', '')} | {r.get('note', '')} |"
            for r in doc.get("results", [])
        ]
        env = doc.get("environment", {})
        sections.append(
            f"### {doc.get('title', path.stem)}\n\n"
            f"Command: `{doc.get('command', 'make bench')}` — measured {env.get('date', '')} on {env.get('machine', '')}\n\n"
            "| measure | value | peer | ratio | goal | note |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
        )
    head = DOC.read_text().split("<!-- measured -->")[0] if DOC.exists() else "# Performance\n\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(head.rstrip() + "\n\n<!-- measured -->\n## Measured figures\n\n" + "\n".join(sections))


def environment() -> dict[str, str]:
    """Where a figure was measured (for the results files)."""
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
    }


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
