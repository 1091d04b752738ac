"""Speculative decoding on the REAL ModelRunner and the bundled SmolLM2: greedy output with speculation
== without, token for token, for both proposers (n-gram and the quantized self-draft), in batches that
mix speculating and plain requests, with prefix-cache hits, under preemption; no block leaks after
rejected drafts; seeded sampling reproduces. The target runs unquantized float32 and the self-draft
takes the default draft quant method (w8a8 here), so the draft really differs and some drafts fail."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from serve import model_store
from serve.engine.engine import LLMEngine
from serve.sampling_params import SamplingParams
from serve.spec_decode.config import SpecDecodeConfig
from tests.requirements import model_missing, require
from tests.unit.test_engine_real import SmallPool

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
PASSAGE = ("The old lighthouse keeper climbed the stairs every evening, lit the great lamp, and watched "
           "the ships pass the rocks until the sun rose again over the grey water.")
TEXTS = [f"Repeat this text exactly: {PASSAGE}\nText: {PASSAGE[:40]}", "def fibonacci(n):",
         "Once upon a time, there was a little girl who lived in a village near the forest."]
MAX_TOKENS = 16
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
NGRAM = SpecDecodeConfig(speculative_method="ngram", num_speculative_tokens=4)
DRAFT = SpecDecodeConfig(speculative_method="draft", num_speculative_tokens=3)
_ids = itertools.count()


@pytest.fixture(scope="module")
def runner() -> Any:
    if not model_store.is_pulled(MODEL):
        require("model", model_missing(MODEL))
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    return ModelRunner(RunnerConfig(str(model_store.model_path(MODEL)), dtype="float32",
                                    kv_cache_bytes=32 << 20, num_threads=1, quantization="none"))


@pytest.fixture(scope="module")
def drafter(runner: Any) -> Any:
    from serve.spec_decode.draft_model import DraftModelProposer

    return DraftModelProposer.for_target(runner, DRAFT, max_batch=4)


@pytest.fixture(scope="module")
def prompts(runner: Any) -> list[list[int]]:
    return [runner.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def plain(runner: Any, prompts: list[list[int]]) -> list[list[int]]:
    return run(LLMEngine(runner), prompts, [GREEDY] * len(prompts))


def run(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    """All prompts in one engine (fresh request ids, so seeded generators start afresh)."""
    names = [f"r{next(_ids)}" for _ in prompts]
    for name, prompt, p in zip(names, prompts, params, strict=True):
        engine.add_request(name, prompt, p)
    got: dict[str, list[int]] = {n: [] for n in names}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.group_id].extend(out.new_token_ids)
    return [got[n] for n in names]


def mixed(prompts: list[list[int]]) -> list[SamplingParams]:
    """The last prompt opts out of speculation: it shares every step with speculating ones."""
    off = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True, num_speculative_tokens=0)
    return [GREEDY] * (len(prompts) - 1) + [off]


def spec_engine(runner: Any, config: SpecDecodeConfig, drafter: Any = None, pool: int | None = None) -> LLMEngine:
    target = runner if pool is None else SmallPool(runner, pool)
    return LLMEngine(target, speculative=config, proposer=drafter if config.speculative_method == "draft" else None)


def assert_no_leaks(engine: LLMEngine, num_blocks: int) -> None:
    kv = engine.scheduler.kv
    assert kv.num_free_blocks() == num_blocks and kv.num_tracked_requests() == 0


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_spec_equals_plain_mixed_batch_and_prefix_hits(runner: Any, drafter: Any, prompts: list[list[int]],
                                                              plain: list[list[int]], method: str) -> None:
    engine = spec_engine(runner, NGRAM if method == "ngram" else DRAFT, drafter)
    assert run(engine, prompts, mixed(prompts)) == plain
    assert run(engine, prompts, mixed(prompts)) == plain  # the second time the prompts hit the prefix cache
    assert engine.scheduler.kv.prefix_cache_hits > 0
    s = engine.scheduler.spec_stats
    assert s.num_drafts > 0 and 0 < s.num_accepted_tokens < s.num_draft_tokens  # some drafts were rejected
    assert_no_leaks(engine, runner.num_blocks)


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_preemption_during_speculation_recovers(runner: Any, drafter: Any, prompts: list[list[int]],
                                                plain: list[list[int]], method: str) -> None:
    # Two long prompts (distinct first blocks) and a short one: all prompts fit the pool with one
    # block to spare, and both long ones need a new block within their first decode steps.
    texts = [TEXTS[0], TEXTS[0].replace("Repeat", "Copy"), TEXTS[1]]
    ps = [runner.tokenizer.encode(t) for t in texts]
    bs = runner.block_size
    pool = sum(-(-len(p) // bs) for p in ps) + 1
    assert all(-(-(len(p) + MAX_TOKENS) // bs) <= pool for p in ps)  # each fits alone
    reference = [run(LLMEngine(runner), [p], [GREEDY])[0] for p in ps]
    engine = spec_engine(runner, NGRAM if method == "ngram" else DRAFT, drafter, pool=pool)
    assert run(engine, ps, [GREEDY] * len(ps)) == reference
    assert engine.scheduler.num_preemptions > 0 and engine.scheduler.spec_stats.num_drafts > 0
    assert_no_leaks(engine, pool)


def test_seeded_sampling_with_speculation_reproduces(runner: Any, drafter: Any, prompts: list[list[int]]) -> None:
    """The draft model's sampled drafts (q not a point mass) through the runner's rejection sampler;
    the n-gram (point-mass) path is covered at the sampler level in test_spec_rejection.py."""
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, top_k=50, seed=11 + i, ignore_eos=True,
                             logprobs=1) for i in range(2)]
    config = DRAFT
    engine = spec_engine(runner, config, drafter)
    first = run(engine, prompts[:2], params)
    again = run(spec_engine(runner, config, drafter), prompts[:2], params)
    assert first == again and all(len(t) == MAX_TOKENS for t in first)
    s = engine.scheduler.spec_stats
    assert s.num_drafts > 0 and s.num_accepted_tokens > 0
    assert_no_leaks(engine, runner.num_blocks)
