"""The summary table printed at the end of a run (one row per load level)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(stats: dict[str, Any], key: str) -> str:
    v = stats.get(key)
    return "-" if v is None else f"{v:.1f}"


def _load_name(load: dict[str, Any]) -> str:
    if load["kind"] == "rate":
        return "rate inf" if load.get("rate") is None else f"rate {load['rate']:g}/s"
    if load["kind"] == "sync":
        return "sync"
    return f"conc {load['concurrency']}"


def summary_table(result: dict[str, Any]) -> Table:
    t = Table(title=f"{result['label']} - {result['target']['base_url']} ({result['target']['endpoint']})")
    for col in ("load", "ok/fail", "req/s", "out tok/s", "steady out tok/s", "TTFT p50/p99 ms",
                "TPOT p50/p99 ms", "ITL p50/p99 ms", "E2E p50/p99 ms"):
        t.add_column(col, justify="right")
    if result["slo"]:
        t.add_column("goodput req/s", justify="right")
    for run in result["runs"]:
        a = run["aggregates"]
        steady = a["steady_state"]
        row = [_load_name(run["load"]), f"{a['completed']}/{a['failed']}", f"{a['request_throughput']:.2f}",
               f"{a['output_throughput']:.1f}", "-" if steady is None else f"{steady['output_throughput']:.1f}"]
        row += [f"{_ms(a[k], 'p50')} / {_ms(a[k], 'p99')}" for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")]
        if result["slo"]:
            row.append("-" if a["goodput"] is None else f"{a['goodput']:.2f}")
        t.add_row(*row)
    return t


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    # A pipe or a log file gets a wide table instead of rich's 80-column default.
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    console.print(summary_table(result))
    for run in result["runs"]:
        a = run["aggregates"]
        if a["errors"]:
            console.print(f"[red]errors at {_load_name(run['load'])}: {a['errors']}")
    src = {run["aggregates"]["token_count_source"] for run in result["runs"]}
    if src - {"usage"}:
        console.print(f"token counts from: {', '.join(sorted(src))} (the server sent no usage for some requests)")
    first = result["runs"][0]["aggregates"]
    overhead, send = first["client_overhead_us_per_event"], first["client_send_ms"]
    if overhead["mean"] is not None:
        console.print(f"client cost: {overhead['mean']:.1f} us per SSE event parsed (p99 {overhead['p99']:.1f} us)"
                      + ("" if send["mean"] is None else f"; {send['mean']:.2f} ms to put a request on the "
                         f"socket (p99 {send['p99']:.2f} ms), included in TTFT"))
    for note in result["notes"]:
        console.print(f"note: {note}")
