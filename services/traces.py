"""Read the spans processes wrote as JSON lines and show them as trees (`partnerhub traces`)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.tree import Tree


def load_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span recorded under `directory` (one JSON object a line, any number of files)."""
    spans: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                line = line.strip()
                if line:
                    try:
                        spans.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash; the rest is still good
    return spans


def group_traces(spans: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Spans by trace id."""
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    return dict(traces)


def latest(traces: dict[str, list[dict[str, Any]]], count: int) -> list[str]:
    """Ids of the `count` traces that started last."""
    starts = {tid: min(s["start_ns"] for s in spans) for tid, spans in traces.items()}
    return sorted(starts, key=starts.__getitem__)[-count:]


def services_in(spans: Iterable[dict[str, Any]]) -> set[str]:
    """The service names a trace crosses."""
    return {str(s.get("service", "")).removeprefix("partnerhub-") for s in spans}


def render(trace_id: str, spans: list[dict[str, Any]]) -> Tree:
    """A rich tree of one trace: service, span name, duration."""
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        parent = span.get("parent_id")
        children[parent if parent in by_id else None].append(span)
    total_ms = (max(s["end_ns"] for s in spans) - min(s["start_ns"] for s in spans)) / 1e6
    tree = Tree(f"[bold]trace {trace_id}[/]  {len(spans)} spans, {total_ms:.1f} ms, services: {', '.join(sorted(services_in(spans)))}")

    def add(node: Tree, span: dict[str, Any]) -> None:
        ms = (span["end_ns"] - span["start_ns"]) / 1e6
        colour = "red" if span.get("status") == "ERROR" else "cyan"
        label = f"[{colour}]{str(span.get('service', '')).removeprefix('partnerhub-')}[/] {span['name']} [dim]{span.get('kind', '')}[/] {ms:.2f} ms"
        branch = node.add(label)
        for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start_ns"]):
            add(branch, child)

    for root in sorted(children.get(None, []), key=lambda s: s["start_ns"]):
        add(tree, root)
    return tree
