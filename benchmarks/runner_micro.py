"""Micro-benchmark of the native ModelRunner alone (no scheduler, no HTTP): decode tokens/s.

    python -m benchmarks.runner_micro [--model PATH] [--batch 1 32] [--prompt 128] [--steps 128]

Each sequence gets a random prompt of --prompt tokens (prefilled in one step per sequence, not
timed), then --steps greedy decode steps run with all sequences in one StepBatch. Reported: decode
output tokens per second = batch * steps / wall time of the decode steps.
"""

from __future__ import annotations

import argparse
import random
import time

from serve.engine.batch import ScheduledSeq, StepBatch
from serve.model_store import model_path
from serve.sampling_params import SamplingParams
from serve.worker.model_runner import ModelRunner, RunnerConfig


def _tables(batch: int, max_len: int, block_size: int) -> list[list[int]]:
    per = (max_len + block_size - 1) // block_size
    return [list(range(i * per, (i + 1) * per)) for i in range(batch)]


def run(runner: ModelRunner, batch: int, prompt_len: int, steps: int, params: SamplingParams) -> float:
    rng = random.Random(0)
    prompts = [[rng.randrange(runner.vocab_size) for _ in range(prompt_len)] for _ in range(batch)]
    tables = _tables(batch, prompt_len + steps + 1, runner.block_size)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    for i in range(batch):  # prefill, untimed
        seq = ScheduledSeq(f"r{i}", prompts[i], 0, tables[i], 1, params, prompts[i], [])
        outputs[i].append(runner.execute(StepBatch([seq])).sampled[f"r{i}"][0].token_id)
    t0 = time.perf_counter()
    for step in range(steps):
        seqs = [ScheduledSeq(f"r{i}", [outputs[i][-1]], prompt_len + step, tables[i], 1, params, prompts[i],
                             outputs[i]) for i in range(batch)]
        out = runner.execute(StepBatch(seqs))
        for i in range(batch):
            outputs[i].append(out.sampled[f"r{i}"][0].token_id)
    elapsed = time.perf_counter() - t0
    runner.execute(StepBatch([], finished_req_ids=[f"r{i}" for i in range(batch)]))
    return batch * steps / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(model_path("smollm2-135m-instruct")))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    runner = ModelRunner(RunnerConfig(args.model, dtype=args.dtype, max_model_len=4096,
                                        num_threads=args.threads))
    print(f"runner ready in {time.perf_counter() - t0:.1f} s ({runner.num_blocks} KV blocks)")
    params = SamplingParams(temperature=args.temperature, max_tokens=args.steps)
    run(runner, 1, 16, 8, params)  # warm-up
    for b in args.batch:
        tps = run(runner, b, args.prompt, args.steps, params)
        print(f"batch {b:3d}: {tps:8.1f} output tok/s  ({1000 * b / tps:.2f} ms/step)")


if __name__ == "__main__":
    main()
