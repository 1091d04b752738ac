"""Decode throughput of native-engine weight variants at batch 1 and batch 32, one process, one run.

    python -m benchmarks.native_variants --variant f32=GGUF:none --variant int8=GGUF:int8_bf16act \
        [--variant LABEL=PATH[:quant][@dtype] ...] [--batch 1 32] [--steps 64] [--threads 2] --out FILE.json

The data plane alone (ModelRunner: forward through the paged KV cache, logits, greedy sampling; no
scheduler, no HTTP): what the weight format changes. Each variant is loaded, measured at every batch
size (random 128-token prompts, prefilled untimed), and freed before the next; output tok/s =
batch * steps / wall time of the decode steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any


def parse_variant(text: str) -> tuple[str, str, str, str]:
    """"label=PATH[:quant][@dtype]" -> (label, path, quant, dtype)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"--variant must look like label=PATH[:quant][@dtype], got {text!r}")
    rest, _, dtype = rest.partition("@")
    path, _, quant = rest.partition(":")
    return label, path, quant or "auto", dtype or "auto"


def measure(path: str, quant: str, dtype: str, batches: list[int], steps: int, threads: int | None) -> dict[str, Any]:
    from benchmarks.runner_micro import run
    from serve.sampling_params import SamplingParams
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    t0 = time.perf_counter()
    runner = ModelRunner(RunnerConfig(path, dtype=dtype, quantization=quant, max_model_len=4096,
                                      num_threads=threads))
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 1),
                           "quantization": runner.model.quantization, "dtype": str(runner.dtype)}
    params = SamplingParams(temperature=0.0, max_tokens=steps)
    run(runner, 1, 16, 8, params)  # warm-up
    for b in batches:
        out[f"batch{b}_tok_s"] = round(run(runner, b, 128, steps, params), 2)
    del runner
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import git_commit, machine_info
    from benchmarks.machine_load import measured_load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", required=True, help="label=PATH[:quant][@dtype]")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    results = []
    with measured_load() as load:
        for label, path, quant, dtype in map(parse_variant, a.variant):
            r = {"label": label, "path": path, "requested_quant": quant, **measure(path, quant, dtype, a.batch,
                                                                                    a.steps, a.threads)}
            print(json.dumps(r), flush=True)
            results.append(r)
    doc = {"command": " ".join(["python -m benchmarks.native_variants", *(argv or sys.argv[1:])]),
           "machine": {**machine_info(), "load": load}, "commit": git_commit(), "threads": a.threads, "steps": a.steps,
           "results": results}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
