"""Decode CUDA graphs on a real GPU: replay == eager, and greedy generation with graphs == without.

    python -m tests.unit.cuda_graph_checks      # exits 1 on a mismatch, 2 without CUDA

test_cuda_graphs_gpu.py runs this in a child process without TRITON_INTERPRET: in a pytest run that
also collects tests/kernels, the Triton kernels were imported for the interpreter, which cannot be
captured. The helpers at the top are shared with the CPU test (tests/kernels/test_cuda_graph_padding.py).
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import torch

from serve.engine.batch import ScheduledSeq, StepBatch
from serve.sampling_params import SamplingParams
from serve.worker.model_runner import ModelRunner


def prefilled_decode_step(runner: ModelRunner, prompt_lens: list[int], seed: int = 0) -> list[ScheduledSeq]:
    """Prefill random prompts eagerly into shuffled blocks; return their next decode step."""
    bs = runner.block_size
    blocks = list(range(runner.num_blocks))
    random.Random(seed).shuffle(blocks)
    gen = torch.Generator().manual_seed(seed)
    prefill, decode = [], []
    graphs, runner.graphs = runner.graphs, None
    for i, n in enumerate(prompt_lens):
        table, blocks = blocks[:n // bs + 2], blocks[n // bs + 2:]
        prompt = torch.randint(3, runner.vocab_size, (n,), generator=gen).tolist()
        prefill.append(ScheduledSeq(f"p{i}", prompt, 0, table, 1, SamplingParams(), prompt, []))
        decode.append(ScheduledSeq(f"p{i}", [5 + i], n, table, 1, SamplingParams(), prompt, [5 + i]))
    try:
        runner.execute(StepBatch(prefill))
    finally:
        runner.graphs = graphs
    return decode


def decode_logits(runner: ModelRunner, seqs: list[ScheduledSeq]) -> torch.Tensor:
    """Logits [len(seqs), V] of one step through the runner's forward (a graph when it has one that fits)."""
    with torch.inference_mode():
        return runner.model.compute_logits(runner._prepare_forward(seqs)())


def kv_snapshot(runner: ModelRunner) -> list[torch.Tensor]:
    return [c.clone() for pair in runner.kv_caches for c in pair]


def kv_restore(runner: ModelRunner, saved: list[torch.Tensor]) -> None:
    for c, s in zip([c for pair in runner.kv_caches for c in pair], saved, strict=True):
        c.copy_(s)


def eager_then_graph(runner: ModelRunner, step: list[ScheduledSeq]) -> tuple[torch.Tensor, torch.Tensor]:
    """(eager logits, graph logits) of the same step from the same KV state."""
    before = kv_snapshot(runner)
    graphs, runner.graphs = runner.graphs, None
    try:
        eager = decode_logits(runner, step)
    finally:
        runner.graphs = graphs
    kv_restore(runner, before)
    return eager, decode_logits(runner, step)


# --- the GPU checks --------------------------------------------------------------------------------

MAX_GRAPH_BATCH = 16
# SmolLM2-135M's attention shapes (9 query heads on 3 KV heads of 64), a small vocabulary, 2 layers.
SHAPE = {"vocab_size": 512, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
         "num_key_value_heads": 3, "head_dim": 64}


def cuda_runner(path: Path, dtype: str, graphs: bool) -> ModelRunner:
    from serve.worker.model_runner import RunnerConfig

    return ModelRunner(RunnerConfig(str(path), dtype=dtype, device="cuda", attention_backend="triton",
                                    kv_cache_bytes=64 << 20, max_model_len=256, quantization="none",
                                    cuda_graphs=graphs, max_graph_batch=MAX_GRAPH_BATCH))


def check_replay(path: Path, dtype: str) -> bool:
    from serve.worker.cuda_graphs import capture_sizes

    runner = cuda_runner(path, dtype, graphs=True)
    captured = runner.graphs.captured if runner.graphs is not None else ()
    ok = captured == capture_sizes(MAX_GRAPH_BATCH)
    print(f"capture {dtype}: sizes {captured}: {'ok' if ok else 'MISMATCH'}")
    tol = 1e-4 if dtype == "float32" else 5e-2  # relative to the largest logit; a stale input is O(1)
    for n in (1, 3, 8, 13, 16, 17):  # 17: larger than every graph, runs eagerly
        step = prefilled_decode_step(runner, [(7 * i) % 40 + 1 for i in range(n)], seed=n)
        replays = runner.graphs.num_replays if runner.graphs is not None else 0
        eager, graph = eager_then_graph(runner, step)
        used = (runner.graphs.num_replays if runner.graphs is not None else 0) - replays
        err = float((graph - eager).abs().max()) / max(1e-6, float(eager.abs().max()))
        good = err <= tol and used == (1 if n <= MAX_GRAPH_BATCH else 0) and bool(torch.isfinite(graph).all())
        print(f"replay {dtype} batch {n}: graphs used {used}, max |graph - eager| / max |eager| = {err:.2e}: "
              f"{'ok' if good else 'MISMATCH'}")
        ok &= good
    return ok


def check_generation(path: Path) -> bool:
    """Greedy tokens with graphs == without, float32 (no ties), for batches inside and past the graphs."""
    from serve.engine.engine import LLMEngine

    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    gen = torch.Generator().manual_seed(3)
    ok = True
    with_graphs, eager = cuda_runner(path, "float32", True), cuda_runner(path, "float32", False)
    for batch in (1, 3, 7, 20):
        prompts = [torch.randint(3, SHAPE["vocab_size"], ((5 * i) % 23 + 2,), generator=gen).tolist()
                   for i in range(batch)]
        out = []
        for runner in (with_graphs, eager):
            outs = LLMEngine(runner).generate(prompts, params)
            out.append([[t for o in seq for t in o.new_token_ids] for seq in outs])
        good = out[0] == out[1]
        print(f"generation batch {batch}: graphs == eager: {'ok' if good else 'MISMATCH'}")
        ok &= good
    used = with_graphs.graphs.num_replays if with_graphs.graphs is not None else 0
    print(f"generation: {used} decode steps replayed: {'ok' if used > 0 else 'MISMATCH'}")
    return ok and used > 0


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    from tests.unit.tiny_checkpoint import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(Path(tmp), **SHAPE)
        ok = check_replay(path, "bfloat16")
        ok &= check_replay(path, "float32")
        ok &= check_generation(path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
