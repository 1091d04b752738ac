"""Equivalence tests of the control plane on the REAL ModelRunner and the bundled SmolLM2 (greedy).

One runner is loaded for the module; each test builds its own LLMEngine (own scheduler, empty prefix
cache) over it. The preemption test hands the scheduler a smaller pool than the runner holds: block
ids stay valid for the runner, and the scheduler has to preempt and recompute.
"""

from __future__ import annotations

from typing import Any

import pytest

from serve import model_store
from serve.engine.batch import RunnerOutput, StepBatch
from serve.engine.config import SchedulerConfig
from serve.engine.engine import LLMEngine
from serve.sampling_params import SamplingParams
from tests.requirements import model_missing, require

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
TEXTS = ["The capital of France is", "Once upon a time, there was a little girl who lived in a village "
         "near the forest. Every morning she walked to the river to fetch water", "def fibonacci(n):"]
GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)


@pytest.fixture(scope="module")
def runner() -> Any:
    if not model_store.is_pulled(MODEL):
        require("model", model_missing(MODEL))
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    return ModelRunner(RunnerConfig(str(model_store.model_path(MODEL)), dtype="float32",
                                    kv_cache_bytes=32 << 20, num_threads=2,
                                    quantization="none"))


@pytest.fixture(scope="module")
def prompts(runner: Any) -> list[list[int]]:
    return [runner.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def alone(runner: Any, prompts: list[list[int]]) -> list[list[int]]:
    """Each prompt on its own, unchunked, cache empty: the reference the other tests must match."""
    return [run(LLMEngine(runner), [p])[0][0] for p in prompts]


def run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams = GREEDY
        ) -> list[tuple[list[int], list[float]]]:
    out = []
    for outs in engine.generate(prompts, params):
        out.append(([t for o in outs for t in o.new_token_ids],
                    [lp.logprob for o in outs for lp in (o.logprobs or [])]))
    return out


def test_batched_equals_one_at_a_time(runner: Any, prompts: list[list[int]], alone: list[list[int]]) -> None:
    batched = run(LLMEngine(runner), prompts)
    assert [toks for toks, _ in batched] == alone


def test_chunked_prefill_equals_unchunked(runner: Any, prompts: list[list[int]], alone: list[list[int]]) -> None:
    engine = LLMEngine(runner, SchedulerConfig(max_num_batched_tokens=7))
    (toks, _), = run(engine, [prompts[1]])
    assert len(prompts[1]) > 14 and toks == alone[1]


def test_prefix_cache_hit_equals_miss(runner: Any, prompts: list[list[int]]) -> None:
    engine = LLMEngine(runner)
    (miss, miss_lp), = run(engine, [prompts[1]])
    (hit, hit_lp), = run(engine, [prompts[1]])
    assert engine.scheduler.kv.prefix_cache_hits >= 16
    assert hit == miss
    assert hit_lp == pytest.approx(miss_lp, abs=2e-3)


class SmallPool:
    """The real runner, reporting fewer KV blocks than it has (forces preemption in the scheduler)."""

    def __init__(self, runner: Any, num_blocks: int) -> None:
        self._runner = runner
        self.num_blocks = num_blocks
        self.block_size, self.max_model_len = runner.block_size, runner.max_model_len
        self.eos_token_ids, self.tokenizer = runner.eos_token_ids, runner.tokenizer

    def execute(self, batch: StepBatch) -> RunnerOutput:
        return self._runner.execute(batch)


def test_preemption_and_recompute_equal_uninterrupted(runner: Any, prompts: list[list[int]],
                                                      alone: list[list[int]]) -> None:
    # Alone each fits; together they need 1 + 3 + 1 blocks of 16 and the pool has 3, and the long
    # one (29 tokens) needs its third block in decode: it is preempted and recomputed.
    assert [-(-(len(p) + 5) // 16) for p in prompts] == [1, 3, 1]
    engine = LLMEngine(SmallPool(runner, 3))
    got = run(engine, prompts)
    assert engine.scheduler.num_preemptions > 0
    assert [toks for toks, _ in got] == alone
    assert engine.scheduler.kv.num_free_blocks() == 3


def test_n_samples_share_prompt_blocks_and_match_n1(runner: Any, prompts: list[list[int]],
                                                    alone: list[list[int]]) -> None:
    engine = LLMEngine(runner)
    engine.add_request("g", prompts[1], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, n=2))
    shared = False
    tokens: dict[int, list[int]] = {0: [], 1: []}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.index].extend(out.new_token_ids)
        kv = engine.scheduler.kv
        if kv.num_blocks_of("g#0") and kv.num_blocks_of("g#1"):
            shared |= kv.block_ids("g#1")[0] == kv.block_ids("g#0")[0]
    assert shared and tokens[0] == tokens[1] == alone[1]


def test_abort_frees_blocks(runner: Any, prompts: list[list[int]]) -> None:
    engine = LLMEngine(runner)
    engine.add_request("a", prompts[1], SamplingParams(max_tokens=50, temperature=0))
    engine.step()
    assert engine.stats()["kv_cache_usage"] > 0
    engine.abort_request("a")
    assert engine.scheduler.kv.num_free_blocks() == runner.num_blocks and not engine.has_unfinished()
