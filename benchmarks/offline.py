"""`sluice bench offline`: an engine's own throughput, called in-process through the Backend protocol
(no HTTP, no JSON), so engine cost can be told apart from serving cost.

Two phases on the same N prompts of exactly `input_len` random token ids, `concurrency` in flight:
1. prefill: max_tokens=1, so the run is (almost) all prompt processing -> prefill tok/s = N*L / wall.
2. generate: max_tokens=output_len with ignore_eos -> decode tok/s = tokens after each request's first,
   divided by the time during which at least one request was past its first token (the union of the
   [first token, end] intervals); also output tok/s over the whole wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

SCHEMA = "sluice.bench.offline"
SCHEMA_VERSION = 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("offline", help="engine throughput in-process (prefill and decode tokens/s)")
    p.add_argument("--backend", default="llamacpp", help="llamacpp | native (any name the registry knows)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or local path")
    p.add_argument("--tokenizer", default=None, help="a .gguf file or HF dir (default: from --model)")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. -o n_parallel=8")
    p.add_argument("--out", default=None, help="result JSON path")
    p.set_defaults(func=run_offline)


@dataclass(frozen=True)
class Timing:
    start: float
    first: float | None
    end: float
    output_tokens: int


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlaps counted once)."""
    total, cur_start, cur_end = 0.0, None, None
    for a, b in sorted(intervals):
        if cur_end is None or a > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start  # type: ignore[operator]
            cur_start, cur_end = a, b
        else:
            cur_end = max(cur_end, b)
    if cur_end is not None:
        total += cur_end - cur_start  # type: ignore[operator]
    return total


def phase_numbers(timings: list[Timing], prompt_len: int) -> dict[str, float]:
    wall = max(t.end for t in timings) - min(t.start for t in timings)
    out = sum(t.output_tokens for t in timings)
    decode_tokens = sum(max(0, t.output_tokens - 1) for t in timings)
    decode_time = union_length([(t.first, t.end) for t in timings if t.first is not None])
    return {"wall_s": wall, "prompt_tokens": prompt_len * len(timings), "output_tokens": out,
            "prefill_tokens_per_s": prompt_len * len(timings) / wall if wall > 0 else 0.0,
            "output_tokens_per_s": out / wall if wall > 0 else 0.0,
            "decode_tokens_per_s": decode_tokens / decode_time if decode_time > 0 else 0.0}


async def _one(backend: Any, rid: str, ids: list[int], text: str, max_tokens: int) -> Timing:
    from serve.backends.base import Delta, GenerateRequest, Usage
    from serve.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(request_id=rid, params=params, prompt=text, prompt_token_ids=tuple(ids))
    start, first, count, usage = time.monotonic(), None, 0, None
    async for ev in backend.generate(req):
        if isinstance(ev, Delta) and (ev.token_ids or ev.text):
            first = first or time.monotonic()
            count += len(ev.token_ids) or 1
        elif isinstance(ev, Usage):
            usage = ev.completion_tokens
    return Timing(start, first, time.monotonic(), usage if usage is not None else count)


async def _phase(backend: Any, prompts: list[tuple[list[int], str]], max_tokens: int, width: int,
                 tag: str) -> list[Timing]:
    gate = asyncio.Semaphore(width)

    async def run(i: int) -> Timing:
        async with gate:
            return await _one(backend, f"offline-{tag}-{i}", *prompts[i], max_tokens)

    return list(await asyncio.gather(*(run(i) for i in range(len(prompts)))))


def make_prompts(a: argparse.Namespace) -> list[tuple[list[int], str]]:
    from benchmarks.tokenizer import load_tokenizer

    tok = load_tokenizer(a.model, a.tokenizer)
    rng = random.Random(a.seed)
    pool = tok.normal_ids()
    ids = [[rng.choice(pool) for _ in range(a.input_len)] for _ in range(a.num_prompts)]
    return [(p, tok.decode(p)) for p in ids]


async def measure(a: argparse.Namespace, backend: Any) -> dict[str, Any]:
    prompts = make_prompts(a)
    await _phase(backend, prompts[:2], 4, min(2, a.concurrency), "warmup")  # load caches, spin up threads
    prefill = phase_numbers(await _phase(backend, prompts, 1, a.concurrency, "prefill"), a.input_len)
    gen = phase_numbers(await _phase(backend, prompts, a.output_len, a.concurrency, "gen"), a.input_len)
    return {"prefill_tokens_per_s": prefill["prefill_tokens_per_s"],
            "decode_tokens_per_s": gen["decode_tokens_per_s"],
            "output_tokens_per_s": gen["output_tokens_per_s"],
            "phases": {"prefill": prefill, "generate": gen}}


def parse_options(items: list[str]) -> dict[str, str]:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: write KEY=VALUE")
        opts[key] = value
    return opts


async def _run(a: argparse.Namespace) -> dict[str, Any]:
    from serve.backends.registry import create_backend
    from serve.config import ReplicaSpec

    backend = create_backend(ReplicaSpec(backend=a.backend, model=a.model, options=parse_options(a.option)))
    await backend.start()
    try:
        return await measure(a, backend)
    finally:
        await backend.stop()


def _check(a: argparse.Namespace) -> None:
    for name in ("num_prompts", "input_len", "output_len", "concurrency"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")


def run_offline(a: argparse.Namespace) -> int:
    try:
        _check(a)
        numbers = asyncio.run(_run(a))
    except ImportError as e:
        print(f"sluice bench offline: the {a.backend} backend is not available here: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # BackendNotAvailable, ModelNotFound, TokenizerNotFound, BackendError, ValueError
        print(f"sluice bench offline: error: {e}", file=sys.stderr)
        return 1
    _report(a, numbers)
    return 0


def _report(a: argparse.Namespace, numbers: dict[str, Any]) -> None:
    from benchmarks.machine import git_commit, machine_info
    from benchmarks.result import write_json

    print(f"{a.backend} {a.model}: {a.num_prompts} prompts x {a.input_len} in / {a.output_len} out, "
          f"concurrency {a.concurrency}")
    print(f"  prefill {numbers['prefill_tokens_per_s']:.1f} tok/s | decode {numbers['decode_tokens_per_s']:.1f} "
          f"tok/s | output {numbers['output_tokens_per_s']:.1f} tok/s")
    if a.out:
        workload = {k: getattr(a, k) for k in ("backend", "model", "num_prompts", "input_len", "output_len",
                                                "concurrency", "seed", "option")}
        write_json({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "command_line": sys.argv,
                    "workload": workload, "machine": machine_info(), "git_commit": git_commit(),
                    **numbers}, a.out)
