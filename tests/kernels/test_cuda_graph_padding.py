"""The decode-graph path on CPU: padded static buffers + the Triton kernel (interpreted) == the eager step.

A real ModelRunner on a tiny random Llama with attention_backend="triton". Graphs are stood in for by
`rerun_capture`, which reruns the forward over the static buffers at each replay, so this checks
everything a CUDA graph replays except the capture itself: padding rows confined to the scratch block,
the block table and context lengths read from the buffers, and the real rows sliced out. The same
checks with real CUDA graphs: tests/unit/cuda_graph_checks.py (gpu-marked, test_cuda_graphs_gpu.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from serve.engine.engine import LLMEngine
from serve.sampling_params import SamplingParams
from serve.worker import model_runner
from serve.worker.cuda_graphs import rerun_capture
from serve.worker.model_runner import ModelRunner, RunnerConfig
from tests.unit.cuda_graph_checks import (
    decode_logits,
    eager_then_graph,
    kv_restore,
    kv_snapshot,
    prefilled_decode_step,
)
from tests.unit.tiny_checkpoint import write_tiny_checkpoint

BS = 4
PROMPT_LENS = [3, 9, 1, 14, 6]


def tiny_runner(path: Path) -> ModelRunner:
    return ModelRunner(RunnerConfig(str(path), dtype="float32", device="cpu", attention_backend="triton",
                                    block_size=BS, kv_cache_bytes=64 * (2 * 2 * BS * 2 * 8 * 4), max_model_len=128,
                                    quantization="none", max_graph_batch=8, num_threads=2))


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def runner(tiny_path: Path) -> ModelRunner:
    return tiny_runner(tiny_path)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_padded_graph_step_equals_the_eager_step(runner: ModelRunner, n: int) -> None:
    step = prefilled_decode_step(runner, PROMPT_LENS[:n])
    before = kv_snapshot(runner)
    runner.graphs = runner.capture_decode_graphs(rerun_capture)  # sizes 1, 2, 4, 8: n=3 and 5 are padded
    try:
        kv_restore(runner, before)  # capturing wrote the scratch block: both paths start from one state
        eager, padded = eager_then_graph(runner, step)
        assert runner.graphs.num_replays == 1
    finally:
        runner.graphs = None
    after_padded = kv_snapshot(runner)
    kv_restore(runner, before)
    assert torch.equal(decode_logits(runner, step), eager)
    after_eager = kv_snapshot(runner)
    assert padded.shape == eager.shape == (n, runner.vocab_size)
    torch.testing.assert_close(padded, eager, atol=1e-5, rtol=1e-5)
    s = runner.scratch_block
    for a, b in zip(after_padded, after_eager, strict=True):  # the same KV, except in the scratch block
        torch.testing.assert_close(a[:s], b[:s], atol=1e-5, rtol=1e-5)
        assert torch.equal(a[s, 1:], b[s, 1:])  # padding rows write the scratch block's first slot only
        if n in (3, 5):
            assert not torch.equal(a[s, 0], b[s, 0])


def generate(runner: ModelRunner, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    return [[t for o in outs for t in o.new_token_ids] for outs in LLMEngine(runner).generate(prompts, params)]


def test_greedy_generation_through_padded_graphs_equals_eager(runner: ModelRunner) -> None:
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, runner.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    runner.graphs = None
    eager = generate(runner, prompts)
    runner.graphs = runner.capture_decode_graphs(rerun_capture)
    try:
        graphed = generate(runner, prompts)
        assert runner.graphs.num_replays >= 5  # the decode steps (batch 5, padded to 8) went through the graphs
    finally:
        runner.graphs = None
    assert graphed == eager


def test_a_runner_whose_capture_fails_warns_and_serves_eagerly(tiny_path: Path, runner: ModelRunner,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Graphs deemed available on CPU: the real torch.cuda capture fails at once, and the runner says so."""
    monkeypatch.setattr(model_runner, "graphs_unavailable", lambda *args: None)
    with caplog.at_level(logging.WARNING, logger="serve.worker.cuda_graphs"):
        failed = tiny_runner(tiny_path)
    assert failed.graphs is None and "CUDA graph capture failed at batch 8" in caplog.text
    prompts = [[5, 6, 7], [8, 9]]
    runner.graphs = None
    assert generate(failed, prompts) == generate(runner, prompts)
