"""`sluice bench serve | compare | peers | offline`."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any

from benchmarks import compare, offline, peers, quality
from benchmarks.datasets import DATASETS, PREFIX_ORDERS, DatasetSpec
from benchmarks.loadgen import LOADS, LoadSpec
from benchmarks.slo import parse_slo
from benchmarks.sweep import DEFAULT_CONCURRENCIES, SweepSpec, parse_values


def add_parser(subparsers: Any) -> None:
    bench = subparsers.add_parser("bench", help="benchmark an OpenAI-compatible endpoint, an engine, or peers")
    sub = bench.add_subparsers(dest="bench_command", metavar="{serve,compare,peers,offline,quality}")
    add_serve_parser(sub)
    compare.add_parser(sub)
    peers.add_parser(sub)
    offline.add_parser(sub)
    quality.add_parser(sub)
    bench.set_defaults(func=lambda _a: (bench.print_help(), 2)[1])


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="latency and throughput of a running endpoint")
    g = p.add_argument_group("target")
    g.add_argument("--base-url", required=True, help="OpenAI root, e.g. http://127.0.0.1:8000 (/v1 optional)")
    g.add_argument("--model", required=True, help="model name sent in requests")
    g.add_argument("--api-key", default=None)
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    g.add_argument("--tokenizer", default=None, help="a .gguf file or HF directory (default: from --model)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--ignore-eos", action="store_true", help="generate exactly max_tokens (fixed output lengths)")
    g.add_argument("--extra-body", default=None, help="JSON object merged into every request body")
    g.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    add_workload_args(p)
    add_load_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--slo", default=None, help="e.g. ttft=500ms,tpot=50ms,e2e=2s (goodput counts requests meeting all)")
    o.add_argument("--out", default=None, help="result JSON path")
    o.add_argument("--html", default=None, help="HTML report path")
    o.add_argument("--csv", default=None, help="per-request CSV path")
    o.add_argument("--label", default="", help="name of this run in reports (default: the model)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--server-pid", type=int, action="append", default=[], metavar="PID",
                   help="the server under test (it and its child processes): its CPU is not counted as other "
                        "work in the recorded machine load (repeatable)")
    p.set_defaults(func=run_serve)


def add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--dataset", choices=DATASETS, default="random")
    g.add_argument("--input-len", type=int, default=128, help="prompt tokens (prefix: unique suffix; multiturn: per turn)")
    g.add_argument("--output-len", type=int, default=128)
    g.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in [L(1-r), L(1+r)]")
    g.add_argument("--num-requests", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prefix-len", type=int, default=1000, help="prefix: shared prefix tokens")
    g.add_argument("--num-prefixes", type=int, default=4, help="prefix: number of shared prefixes")
    g.add_argument("--prefix-order", choices=PREFIX_ORDERS, default="cyclic",
                   help="prefix: request i takes prefix i %% N (cyclic), or a seeded shuffle of those (random)")
    g.add_argument("--turns", type=int, default=4, help="multiturn: user turns per conversation")
    g.add_argument("--dataset-path", default=None, help='jsonl: file of {"prompt": ...} or {"turns": [...]}')


def add_load_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--load", choices=LOADS, default="concurrency")
    g.add_argument("--concurrency", type=int, default=1, help="closed loop: requests in flight")
    g.add_argument("--rate", type=float, default=math.inf, help="open loop: requests per second (inf: all at once)")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps; 1.0 = Poisson")
    g.add_argument("--max-concurrency", type=int, default=None, help="open loop: cap on requests in flight")
    g.add_argument("--duration", type=float, default=None, help="seconds to keep sending (cycles the workload)")
    g.add_argument("--time-limit", type=float, default=None,
                   help="seconds after which no new request is sent, even if --num-requests is not reached")
    g.add_argument("--warmup", type=int, default=0, help="requests sent first and not counted")
    g.add_argument("--sweep-by", choices=("concurrency", "rate"), default="concurrency")
    g.add_argument("--sweep-values", default=",".join(str(v) for v in DEFAULT_CONCURRENCIES))
    g.add_argument("--no-sweep-stop", action="store_true", help="run every sweep step (no saturation stop)")
    g.add_argument("--requests-per-concurrency", type=int, default=0,
                   help="sweep: each step sends max(--num-requests, K x concurrency) requests")


def serve_config(a: argparse.Namespace) -> Any:
    """Namespace -> BenchConfig; ValueError names the bad flag."""
    from benchmarks.bench_serve import BenchConfig
    from benchmarks.client import Target, normalize_base_url

    extra = json.loads(a.extra_body) if a.extra_body else {}
    if not isinstance(extra, dict):
        raise ValueError("--extra-body must be a JSON object")
    target = Target(base_url=normalize_base_url(a.base_url), model=a.model, endpoint=a.endpoint,
                    api_key=a.api_key, ignore_eos=a.ignore_eos, temperature=a.temperature,
                    timeout_s=a.timeout, extra_body=extra)
    dataset = DatasetSpec(name=a.dataset, num_requests=a.num_requests, input_len=a.input_len,
                          output_len=a.output_len, range_ratio=a.range_ratio, seed=a.seed,
                          prefix_len=a.prefix_len, num_prefixes=a.num_prefixes, prefix_order=a.prefix_order,
                          turns=a.turns, path=a.dataset_path)
    kind = "concurrency" if a.load == "sweep" else a.load
    load = LoadSpec(kind=kind, concurrency=a.concurrency, rate=a.rate, burstiness=a.burstiness,
                    duration_s=a.duration, max_concurrency=a.max_concurrency, seed=a.seed,
                    time_limit_s=a.time_limit)
    sweep = (SweepSpec(by=a.sweep_by, values=parse_values(a.sweep_values), stop=not a.no_sweep_stop)
             if a.load == "sweep" else None)
    if a.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    return BenchConfig(target=target, dataset=dataset, load=load, sweep=sweep, warmup=a.warmup,
                       slo=parse_slo(a.slo), tokenizer=a.tokenizer, label=a.label, quiet=a.quiet,
                       requests_per_concurrency=a.requests_per_concurrency, server_pids=tuple(a.server_pid))


def run_serve(a: argparse.Namespace) -> int:
    from benchmarks.bench_serve import TargetUnreachable, bench
    from benchmarks.tokenizer import TokenizerNotFound

    try:
        cfg = serve_config(a)
        result = asyncio.run(bench(cfg, ["sluice", *sys.argv[1:]]))
    except (ValueError, TargetUnreachable, TokenizerNotFound) as e:
        print(f"sluice bench serve: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    return write_outputs(result, a.out, a.html, a.csv, a.quiet)


def write_outputs(result: dict[str, Any], out: str | None, html: str | None, csv: str | None,
                  quiet: bool = False) -> int:
    from benchmarks.report_html import write_report
    from benchmarks.result import write_csv, write_json
    from benchmarks.summary import print_summary

    if out:
        write_json(result, out)
    if csv:
        write_csv(result, csv)
    if html:
        write_report(result, html)
    if not quiet:
        print_summary(result)
    ok = sum(r["aggregates"]["completed"] for r in result["runs"])
    return 0 if ok else 1
