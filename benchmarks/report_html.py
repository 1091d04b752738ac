"""One self-contained HTML report per result: facts, the summary table, and embedded plots."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from benchmarks import plots

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.facts td{text-align:left}.note{color:#a40}code{background:#f5f5f5;padding:1px 4px}"""

COLUMNS = (("completed", "ok"), ("failed", "failed"), ("request_throughput", "req/s"),
           ("output_throughput", "out tok/s"), ("total_token_throughput", "total tok/s"))
LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def img(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


def facts_table(result: dict[str, Any]) -> str:
    m, w, t = result["machine"], result["workload"], result["target"]
    rows = {
        "target": f"{t['base_url']} model={t['model']} endpoint={t['endpoint']} ignore_eos={t['ignore_eos']}",
        "workload": ", ".join(f"{k}={v}" for k, v in w.items() if v is not None),
        "load": json.dumps({k: v for k, v in result["load"].items() if k != "client"}),
        "machine": f"{m['cpu_model']}, {m['cores_logical']} logical cores, {m['ram_gib']} GiB, {m['os']}",
        "git commit": result["git_commit"] or "-",
        "created": result["created_at"],
        "command": " ".join(result["command_line"]),
        "SLO": json.dumps(result["slo"]) if result["slo"] else "-",
    }
    cells = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table class='facts'>{cells}</table>"


def runs_table(result: dict[str, Any]) -> str:
    head = "<tr><th>load</th>" + "".join(f"<th>{n}</th>" for _, n in COLUMNS)
    head += "".join(f"<th>{n} {p} ms</th>" for _, n in LATENCIES for p in ("mean", "p50", "p90", "p99", "max"))
    head += "<th>goodput req/s</th></tr>"
    rows = []
    for run in result["runs"]:
        a = run["aggregates"]
        cells = [plots.run_name(run)] + [_fmt(a[k]) for k, _ in COLUMNS]
        cells += [_fmt(a[k][p]) for k, _ in LATENCIES for p in ("mean", "p50", "p90", "p99", "max")]
        cells.append(_fmt(a["goodput"]))
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def errors_html(result: dict[str, Any]) -> str:
    lines = [f"<li>{html.escape(plots.run_name(r))}: {html.escape(json.dumps(r['aggregates']['errors']))}</li>"
             for r in result["runs"] if r["aggregates"]["errors"]]
    notes = [f"<li class='note'>{html.escape(n)}</li>" for n in result["notes"]]
    return f"<ul>{''.join(lines + notes)}</ul>" if lines or notes else ""


def render(result: dict[str, Any]) -> str:
    runs = result["runs"]
    parts = [facts_table(result), "<h2>Summary</h2>", runs_table(result), errors_html(result),
             "<h2>Distributions</h2>", img(plots.distributions(runs, [plots.run_name(r) for r in runs]), "dist")]
    if len(runs) > 1:
        parts += ["<h2>Against load</h2>", img(plots.curves([result], [result["label"]]), "curves")]
    for run in runs:
        parts += [f"<h3>Timeline: {html.escape(plots.run_name(run))}</h3>", img(plots.timeline(run), "timeline")]
    parts.append("<p>Definitions: TTFT = sent to first content chunk; E2E = sent to last event; "
                 "TPOT = (E2E - TTFT) / (output tokens - 1); ITL = gaps between content chunks, pooled. "
                 "See benchmarks/README.md.</p>")
    return page(f"sluice bench: {result['label']}", "".join(parts))


def write_report(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(result))
