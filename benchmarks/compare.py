"""`sluice bench compare A.json B.json ...`: side by side, each metric as a ratio to the first file.

Runs are matched by load level (e.g. "concurrency 8"); a level missing from a file shows as '-'.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS: tuple[tuple[str, str | None, str], ...] = (
    ("output_throughput", None, "output tok/s"),
    ("request_throughput", None, "req/s"),
    ("total_token_throughput", None, "total tok/s"),
    ("ttft_ms", "p50", "TTFT p50 ms"), ("ttft_ms", "p99", "TTFT p99 ms"),
    ("tpot_ms", "p50", "TPOT p50 ms"), ("tpot_ms", "p99", "TPOT p99 ms"),
    ("itl_ms", "p50", "ITL p50 ms"), ("itl_ms", "p99", "ITL p99 ms"),
    ("e2e_ms", "p50", "E2E p50 ms"), ("e2e_ms", "p99", "E2E p99 ms"),
    ("failed", None, "failed requests"),
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare result files side by side (ratios to the first)")
    p.add_argument("results", nargs="+", help="result JSON files; the first is the baseline")
    p.add_argument("--html", default=None, help="write an HTML report with all curves on one chart")
    p.add_argument("--markdown", default=None, help="write the table as markdown")
    p.set_defaults(func=run_compare)


def metric(agg: dict[str, Any], key: str, sub: str | None) -> float | None:
    v = agg.get(key)
    return v.get(sub) if sub and isinstance(v, dict) else v


def levels(results: Sequence[dict[str, Any]]) -> list[str]:
    from benchmarks.plots import run_name

    seen: list[str] = []
    for res in results:
        for run in res["runs"]:
            if run_name(run) not in seen:
                seen.append(run_name(run))
    return seen


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """[level, metric, 'v0', 'v1 (1.23x)', ...] for every level and metric."""
    from benchmarks.plots import run_name

    rows: list[list[str]] = []
    for level in levels(results):
        aggs = [next((r["aggregates"] for r in res["runs"] if run_name(r) == level), None) for res in results]
        for key, sub, name in METRICS:
            vals = [None if a is None else metric(a, key, sub) for a in aggs]
            rows.append([level, name, *(_cell(v, vals[0], i == 0) for i, v in enumerate(vals))])
    return rows


def _cell(v: float | None, base: float | None, first: bool) -> str:
    if v is None:
        return "-"
    text = f"{v:.1f}" if isinstance(v, float) else str(v)
    if first or not base:
        return text
    return f"{text} ({v / base:.2f}x)"


def labels_of(results: Sequence[dict[str, Any]], paths: Sequence[str]) -> list[str]:
    labels = [r.get("label") or Path(p).stem for r, p in zip(results, paths, strict=True)]
    return [lab if labels.count(lab) == 1 else f"{lab} ({Path(p).stem})" for lab, p in zip(labels, paths, strict=True)]


def markdown(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    head = "| load | metric | " + " | ".join(labels) + " |\n"
    head += "|---|---|" + "---|" * len(labels) + "\n"
    return head + "".join("| " + " | ".join(r) + " |\n" for r in table_rows(results))


def render_html(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    from benchmarks.plots import curves, distributions
    from benchmarks.report_html import img, page

    head = "<tr><th>load</th><th>metric</th>" + "".join(f"<th>{html.escape(lab)}</th>" for lab in labels) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table_rows(results))
    parts = [f"<p>Ratios are to <b>{html.escape(labels[0])}</b>.</p><table>{head}{body}</table>",
             "<h2>Curves</h2>", img(curves(results, labels), "curves"), "<h2>Distributions (first load level)</h2>",
             img(distributions([r["runs"][0] for r in results], labels), "distributions")]
    return page("sluice bench compare: " + " vs ".join(labels), "".join(parts))


def run_compare(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from benchmarks.result import ResultError, load_result

    try:
        results = [load_result(p) for p in a.results]
    except ResultError as e:
        print(f"sluice bench compare: error: {e}", file=sys.stderr)
        return 1
    labels = labels_of(results, a.results)
    table = Table(title=f"ratios to {labels[0]}")
    for col in ("load", "metric", *labels):
        table.add_column(col, justify="right")
    for row in table_rows(results):
        table.add_row(*row)
    Console().print(table)
    if a.html:
        Path(a.html).parent.mkdir(parents=True, exist_ok=True)
        Path(a.html).write_text(render_html(results, labels))
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(markdown(results, labels))
    return 0
