"""`sluice bench serve`: run a workload against an OpenAI-compatible endpoint and build the result."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from benchmarks.client import Target
from benchmarks.datasets import DatasetSpec, build
from benchmarks.loadgen import LoadSpec, Runner, make_client, run_load
from benchmarks.machine import git_commit, machine_info
from benchmarks.machine_load import measured_load
from benchmarks.progress import Progress
from benchmarks.result import build_result, run_entry
from benchmarks.sweep import SweepSpec, stop_reason
from benchmarks.tokenizer import BenchTokenizer, TokenizerNotFound, load_tokenizer
from benchmarks.workload import Conversation


class TargetUnreachable(Exception):
    """The endpoint did not answer; one line for the user."""


@dataclass(frozen=True)
class BenchConfig:
    target: Target
    dataset: DatasetSpec
    load: LoadSpec
    sweep: SweepSpec | None = None  # set when --load sweep
    warmup: int = 0
    slo: dict[str, float] = field(default_factory=dict)
    tokenizer: str | None = None  # --tokenizer; None: derive from --model
    label: str = ""
    quiet: bool = False
    server_pids: tuple[int, ...] = ()  # --server-pid: the server under test's CPU is not "other work"
    # Sweeps: each concurrency step sends max(num_requests, this x concurrency) conversations (0: off),
    # so high-concurrency steps reach a steady state instead of one wave.
    requests_per_concurrency: int = 0


def load_steps(cfg: BenchConfig) -> list[LoadSpec]:
    if cfg.sweep is None:
        return [cfg.load]
    if cfg.sweep.by == "concurrency":
        return [replace(cfg.load, kind="concurrency", concurrency=int(v)) for v in cfg.sweep.values]
    return [replace(cfg.load, kind="rate", rate=v) for v in cfg.sweep.values]


def step_size(cfg: BenchConfig, load: LoadSpec) -> int:
    width = load.in_flight if load.kind != "rate" else None
    if cfg.requests_per_concurrency <= 0 or width is None:
        return cfg.dataset.num_requests
    return max(cfg.dataset.num_requests, cfg.requests_per_concurrency * width)


def _tokenizer(cfg: BenchConfig, notes: list[str]) -> BenchTokenizer | None:
    try:
        return load_tokenizer(cfg.target.model, cfg.tokenizer)
    except TokenizerNotFound:
        if cfg.dataset.name != "jsonl":
            raise
        notes.append("no tokenizer: prompt lengths unknown; output tokens counted from chunks without usage")
        return None


async def check_target(target: Target) -> dict[str, Any]:
    """GET /models: the endpoint is up and serves `target.model` (a mismatch is only noted)."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as c:
            r = await c.get(f"{target.base_url}/models", headers=target.headers())
    except httpx.HTTPError as e:
        raise TargetUnreachable(f"cannot reach {target.base_url}/models: {e!r}") from e
    if r.status_code in (401, 403):
        raise TargetUnreachable(f"{target.base_url} refused the API key (HTTP {r.status_code}); pass --api-key")
    try:
        ids = [m.get("id") for m in r.json().get("data", [])]
    except (ValueError, AttributeError):
        ids = []
    return {"status": r.status_code, "models": ids}


async def _run_step(client: httpx.AsyncClient, cfg: BenchConfig, load: LoadSpec, convs: list[Conversation],
                    tok: BenchTokenizer | None, progress: Progress, title: str) -> list[Any]:
    count = tok.count if tok else None
    total = None if load.duration_s else sum(len(c.turns) for c in convs)
    with progress.task(title, total) as advance:
        runner = Runner(client, cfg.target, count, on_done=advance)
        return await run_load(runner, load, convs)


async def _warmup(client: httpx.AsyncClient, cfg: BenchConfig, first: LoadSpec, tok: BenchTokenizer | None,
                  progress: Progress) -> None:
    """Requests at the first step's width that open the connections and warm both sides; not counted."""
    if cfg.warmup <= 0:
        return
    spec = replace(cfg.dataset, num_requests=cfg.warmup, seed=cfg.dataset.seed + 1_000_003)
    width = max(1, min(cfg.warmup, first.in_flight or cfg.warmup))
    load = LoadSpec(kind="concurrency", concurrency=width)
    await _run_step(client, cfg, load, build(spec, tok), tok, progress, "warm-up")


def _widest(steps: list[LoadSpec]) -> LoadSpec:
    """The step needing the most connections; one client (one pool) serves every step."""
    return max(steps, key=lambda s: math.inf if s.in_flight is None else s.in_flight)


async def bench(cfg: BenchConfig, command_line: list[str]) -> dict[str, Any]:
    notes: list[str] = []
    server = await check_target(cfg.target)
    if server["models"] and cfg.target.model not in server["models"]:
        notes.append(f"server lists models {server['models']}, not {cfg.target.model!r}")
    tok = _tokenizer(cfg, notes)
    steps = load_steps(cfg)
    # Each step gets its own prompts (own seed): a server's prefix cache must not turn a later step into hits.
    workloads = [build(replace(cfg.dataset, num_requests=step_size(cfg, s), seed=cfg.dataset.seed + 7919 * i), tok)
                 for i, s in enumerate(steps)]
    progress = Progress(quiet=cfg.quiet)
    runs: list[dict[str, Any]] = []
    # Other work is measured before and during the steps, never from a post-run load average.
    with measured_load(server_pids=cfg.server_pids) as other_work:
        async with make_client(_widest(steps)) as client:
            await _warmup(client, cfg, steps[0], tok, progress)
            for i, load in enumerate(steps):
                records = await _run_step(client, cfg, load, workloads[i], tok, progress, _title(load, i, len(steps)))
                runs.append(run_entry(load.describe(), records, cfg.slo))
                if load.time_limit_s and not load.duration_s and len(records) < step_size(cfg, load):
                    notes.append(f"{_title(load, i, len(steps))}: time limit {load.time_limit_s:g} s reached after "
                                 f"{len(records)} of {step_size(cfg, load)} requests")
                reason = stop_reason(cfg.sweep, [r["aggregates"] for r in runs]) if cfg.sweep else None
                if reason:
                    notes.append(f"sweep stopped after {_title(load, i, len(steps))}: {reason}")
                    break
    notes += short_output_notes(cfg, runs)
    return build_result(
        command_line=command_line, label=cfg.label or cfg.target.model, target=_target_json(cfg, server),
        workload=_workload_json(cfg, tok), load=_load_json(cfg), slo=cfg.slo, runs=runs,
        machine={**machine_info(), "load": other_work}, git_commit=git_commit(), notes=notes)


def short_output_notes(cfg: BenchConfig, runs: list[dict[str, Any]]) -> list[str]:
    """With ignore_eos every request should produce output_len tokens; say so when they did not."""
    if not cfg.target.ignore_eos or cfg.dataset.range_ratio:
        return []
    notes = []
    for run in runs:
        mean = run["aggregates"]["output_tokens_per_request"]["mean"]
        if mean is not None and mean < 0.98 * cfg.dataset.output_len:
            notes.append(f"{run['load']}: mean output {mean:.1f} tokens < {cfg.dataset.output_len} asked "
                         "(the server may not honour ignore_eos)")
    return notes


def _title(load: LoadSpec, i: int, n: int) -> str:
    what = f"concurrency {load.concurrency}" if load.kind != "rate" else (
        "rate inf" if math.isinf(load.rate) else f"rate {load.rate:g}/s")
    if load.kind == "sync":
        what = "sync"
    return f"[{i + 1}/{n}] {what}" if n > 1 else what


def _target_json(cfg: BenchConfig, server: dict[str, Any]) -> dict[str, Any]:
    t = cfg.target
    return {"base_url": t.base_url, "model": t.model, "endpoint": t.endpoint, "ignore_eos": t.ignore_eos,
            "temperature": t.temperature, "extra_body": t.extra_body, "server_models": server["models"],
            "api_key_set": bool(t.api_key)}


def _workload_json(cfg: BenchConfig, tok: BenchTokenizer | None) -> dict[str, Any]:
    d = dataclasses.asdict(cfg.dataset)
    d["dataset"] = d.pop("name")
    d["warmup"] = cfg.warmup
    d["requests_per_concurrency"] = cfg.requests_per_concurrency
    d["tokenizer"] = tok.source if tok else None
    return d


def _load_json(cfg: BenchConfig) -> dict[str, Any]:
    d = cfg.load.describe()
    if cfg.sweep:
        d = {"kind": "sweep", **dataclasses.asdict(cfg.sweep), "duration_s": cfg.load.duration_s}
    d["client"] = {"http": f"httpx {httpx.__version__}", "python": sys.version.split()[0],
                   "clock": "time.monotonic"}
    return d
