"""The peers table (stack x concurrency: output tok/s, TTFT and TPOT p50/p99) and the results README."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.plots import run_name


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(results: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    head = ("| stack | concurrency | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms "
            "| ok / failed | mean output tokens |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for res, name in zip(results, names, strict=True):
        for run in res["runs"]:
            a = run["aggregates"]
            rows.append(f"| {name} | {run['load'].get('concurrency', run_name(run))} | "
                        f"{_f(a['output_throughput'])} | {_f(a['ttft_ms']['p50'], 0)} | "
                        f"{_f(a['ttft_ms']['p99'], 0)} | {_f(a['tpot_ms']['p50'])} | {_f(a['tpot_ms']['p99'])} | "
                        f"{a['completed']} / {a['failed']} | {_f(a['output_tokens_per_request']['mean'])} |\n")
    return head + "".join(rows)


def readme(results: Sequence[dict[str, Any]], names: Sequence[str], skipped: Sequence[dict[str, str]],
           a: argparse.Namespace, table: str) -> str:
    machine = results[0]["machine"] if results else {}
    lines = [
        "# `sluice bench peers`\n",
        f"Model: SmolLM2-135M-Instruct (bundled GGUF Q4_1; vLLM runs weights dequantized from it, dtype in its "
        f"line below). "
        f"Workload: random {a.input_len} input / {a.output_len} output tokens, ignore_eos, {a.endpoint} endpoint, "
        f"streaming; concurrency {a.concurrency_levels}; max({a.min_requests}, "
        f"{a.requests_per_concurrency} x concurrency) requests per level, fresh prompts per level, "
        f"{a.warmup} warm-up requests.\n",
    ]
    if machine:
        lines.append(f"Machine: {machine['cpu_model']}, {machine['cores_logical']} logical cores, "
                     f"{machine['ram_gib']} GiB RAM. Commit: {results[0]['git_commit']}.\n")
        if machine.get("cpu_flags"):
            lines.append(f"CPU ISA flags: {' '.join(machine['cpu_flags'])}. Code paths chosen at run time: "
                         f"{', '.join(f'{k} = {v}' for k, v in machine.get('code_paths', {}).items())}.\n")
    busy = [r["machine"].get("load_avg_1m") or 0.0 for r in results]
    if machine and busy and max(busy) > 0.75 * (machine.get("cores_logical") or 1):
        lines.append(f"\n**Caveat: the machine was busy with other work during this run** (1-minute load "
                     f"average {min(busy):.1f}-{max(busy):.1f} on {machine['cores_logical']} cores; no two stacks ran at once, "
                     "but other jobs did). Absolute numbers are far "
                     "below what these stacks do on a quiet machine; stacks measured at different load are "
                     "not strictly comparable. Re-run `sluice bench peers` on a quiet machine.\n")
    lines += ["\n", table, "\n"]
    for res, name in zip(results, names, strict=True):
        st = res.get("stack", {})
        src = {r["aggregates"]["token_count_source"] for r in res["runs"]}
        lines.append(f"- **{name}**: {st.get('description', '')}; healthy after {st.get('startup_s', '-')} s; "
                     f"token counts from {', '.join(sorted(src))}; machine load average (1 min) at the end "
                     f"{res['machine'].get('load_avg_1m', '-')}.\n")
        lines += [f"  - note: {n}\n" for n in res["notes"]]
    for s in skipped:
        lines.append(f"- **{s['stack']}**: not measured ({s['reason']}).\n")
    lines.append("\nDefinitions: TTFT = request sent to first content chunk; TPOT = (E2E - TTFT) / (output "
                 "tokens - 1), per request; see benchmarks/README.md. Per-stack JSON files hold every "
                 "request; compare.html plots the curves. Absolute numbers on this shared 2-core machine are "
                 "noisy; ratios measured in one run are the point.\n")
    return "".join(lines)


def results_index(results_dir: Path) -> str:
    """benchmarks/results/README.md: every committed peers run, newest first, with its table."""
    parts = ["# Benchmark results\n\n",
             "Each `<date>-peers/` directory is one `sluice bench peers` run on the build machine (2 cores, "
             "no GPU): one result JSON per stack (schema in `benchmarks/README.md`), `compare.html` with the "
             "curves, and a README with the workload and notes. Newest first.\n"]
    for run in sorted((d for d in results_dir.glob("*-peers") if (d / "table.md").is_file()), reverse=True):
        parts.append(f"\n## [{run.name}]({run.name}/README.md)\n\n{(run / 'table.md').read_text()}")
    return "".join(parts)
