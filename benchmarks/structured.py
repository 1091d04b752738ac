"""Structured outputs in the native engine: what the grammar masks cost, side by side in one run.

In process (no HTTP), the default serving target (bundled GGUF through the CPU kernels). For batch
B in --batches, B copies of one request, unconstrained vs every request constrained by a JSON schema
(an array of short strings, long enough that neither run ends early: both ignore EOS until the
grammar completes or max_tokens). Runs alternate (the machine's load drifts).

  * output tok/s = output tokens / wall time of the step loop, aggregate over the batch;
  * mask cost = time spent filling bitmasks per constrained token, in us (the sampler checks each
    constrained token first and fills a row's mask only when the grammar refuses the token, or before
    sampling for rows that truncate, want logprobs or verify drafts: serve/sampling/constraints.py);
  * masked rows = the share of constrained rows that needed a full mask.

    python -m benchmarks.structured --threads 2 --reps 3 --batches 1 32 --out 2026-11-30-structured
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import git_commit, machine_info
from benchmarks.machine_load import measured_load
from serve.engine.engine import LLMEngine
from serve.model_store import model_path
from serve.sampling_params import SamplingParams
from serve.structured import rows as grammar_rows
from serve.structured.spec import StructuredSpec

_RESULTS = Path(__file__).parent / "results"
SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 40, "maxItems": 40}
PROMPT = ("<|im_start|>user\nList forty fruits and vegetables as a JSON array of strings.<|im_end|>\n"
          "<|im_start|>assistant\n")


class FillTimer:
    """Wraps the grammar's mask filling to add up the seconds it takes and the rows it fills."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.rows = 0
        self._orig = grammar_rows.fill_rows

    def __enter__(self) -> FillTimer:
        def timed(matcher: Any, drafts: list[int], bitmask: Any, row0: int) -> None:
            t0 = time.perf_counter()
            self._orig(matcher, drafts, bitmask, row0)
            self.seconds += time.perf_counter() - t0
            self.rows += 1 + len(drafts)

        grammar_rows.fill_rows = timed
        return self

    def __exit__(self, *exc: object) -> None:
        grammar_rows.fill_rows = self._orig


def run_once(runner: Any, prompt: list[int], batch: int, max_tokens: int, constrained: bool) -> dict[str, float]:
    engine = LLMEngine(runner)
    spec = StructuredSpec.json_schema(SCHEMA) if constrained else None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=not constrained, structured=spec)
    for i in range(batch):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", prompt, params)
    tokens = 0
    with FillTimer() as fills:
        t0 = time.perf_counter()
        while engine.has_unfinished():
            tokens += sum(len(o.new_token_ids) for o in engine.step())
        wall = time.perf_counter() - t0
    return {"output_tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "mask_us_per_token": fills.seconds / tokens * 1e6 if constrained else 0.0,
            "masked_row_share": fills.rows / tokens if constrained else 0.0}


def compare(runner: Any, prompt: list[int], batch: int, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"none": [], "structured": []}
    for _ in range(args.reps):
        for name in runs:  # alternate, so drift hits both
            runs[name].append(run_once(runner, prompt, batch, args.max_tokens, name == "structured"))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    return {"batch": batch, **med, "runs": runs,
            "throughput_ratio": med["structured"]["tok_s"] / med["none"]["tok_s"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--out", default=None, help="directory name under benchmarks/results/")
    args = ap.parse_args(argv)
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    runner = ModelRunner(RunnerConfig(str(model_path(args.model)), num_threads=args.threads,
                                      kv_cache_bytes=256 << 20))
    prompt = runner.tokenizer.encode(PROMPT)
    run_once(runner, prompt, 1, 8, True)  # warm: compile the grammar, touch every code path once
    with measured_load() as load:
        result = {"command": "python -m benchmarks.structured " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": machine_info(), "git_commit": git_commit(), "args": vars(args),
                  "quantization": getattr(runner.model, "quantization", None), "schema": SCHEMA,
                  "batches": [compare(runner, prompt, b, args) for b in args.batches]}
    result["machine"]["load"] = load
    for c in result["batches"]:
        print(f"batch {c['batch']:3d}  none {c['none']['tok_s']:7.1f} tok/s  structured {c['structured']['tok_s']:7.1f}"
              f" tok/s  ratio {c['throughput_ratio']:.3f}  mask {c['structured']['mask_us_per_token']:.1f} us/token"
              f"  masked rows {c['structured']['masked_row_share']:.1%}")
    if args.out:
        out = _RESULTS / args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "structured.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
