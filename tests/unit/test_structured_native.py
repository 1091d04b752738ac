"""Structured outputs in the NATIVE engine on the bundled model (default target: GGUF through the CPU
kernels), grammar masks applied or checked by the shared sampler (serve/sampling/constraints.py):
- the schema / regex / choice corpus validates at temperature 0 and 0.8 (also under n-gram speculation,
  where verify rows are masked per draft prefix and refused drafts never touch the matcher);
- a constrained greedy request gives the same output alone and in a batch of 16 mixed constrained /
  unconstrained requests; n > 1 samples each walk their own grammar; abort frees everything;
- under preemption (a KV pool too small for the batch) each matcher stays with its request: a
  preempted request resumes its grammar where it left off, and the outputs equal the same requests run
  alone; aborting a preempted or a running constrained request releases its matcher. These run on the
  float runner (tests/unit/model_fixtures.py): a resumed request is recomputed over its prefix-cache
  hit, which equals an uninterrupted run to rounding there, so greedy equality holds on any CPU.
"""

from __future__ import annotations

import gc
import json
import re
import weakref
from typing import Any

import jsonschema
import pytest

from serve import model_store
from serve.engine.engine import LLMEngine
from serve.engine.request import RequestStatus
from serve.sampling_params import SamplingParams
from serve.spec_decode.config import SpecDecodeConfig
from serve.structured.spec import StructuredSpec
from tests.data.structured_schemas import CHOICES, REGEXES, SCHEMAS
from tests.requirements import model_missing, require
from tests.unit import model_fixtures
from tests.unit.test_engine_real import SmallPool

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 160
NGRAM = SpecDecodeConfig(speculative_method="ngram", num_speculative_tokens=4, speculative_disable_by_batch_size=0)


@pytest.fixture(scope="module")
def runner() -> Any:
    require("model", model_missing(MODEL))
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    return ModelRunner(RunnerConfig(str(model_store.model_path(MODEL)), kv_cache_bytes=96 << 20, num_threads=2))


def chat(runner: Any, text: str) -> list[int]:
    return runner.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def generate(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[str, str]]:
    """(text, finish_reason) of sample 0 of each request, all in one engine."""
    names = [f"s{i}" for i in range(len(prompts))]
    for name, prompt, p in zip(names, prompts, params, strict=True):
        engine.add_request(name, prompt, p)
    text = dict.fromkeys(names, "")
    reason = dict.fromkeys(names, "")
    while engine.has_unfinished():
        for out in engine.step():
            if out.index == 0:
                text[out.group_id] += out.new_text
                reason[out.group_id] = out.finish_reason or reason[out.group_id]
    return [(text[n], reason[n]) for n in names]


def _valid_json(schema: dict, text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@pytest.mark.parametrize("temperature,speculate", [(0.0, False), (0.8, False), (0.0, True)])
def test_the_corpus_validates(runner: Any, temperature: float, speculate: bool) -> None:
    engine = LLMEngine(runner, speculative=NGRAM if speculate else None)
    items = ([(f"Reply with JSON describing {n}.", StructuredSpec.json_schema(s)) for n, s in SCHEMAS]
             + [(f"Write {n}.", StructuredSpec("regex", rx)) for n, rx in REGEXES]
             + [(q, StructuredSpec.choices(opts)) for q, opts in CHOICES])
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=i, structured=spec)
              for i, (_, spec) in enumerate(items)]
    outs = generate(engine, [chat(runner, q) for q, _ in items], params)
    checks = ([lambda t, s=s: _valid_json(s, t) for _, s in SCHEMAS]
              + [lambda t, rx=rx: re.fullmatch(rx, t) is not None for _, rx in REGEXES]
              + [lambda t, o=opts: t in o for _, opts in CHOICES])
    bad = [(q, reason, text) for (q, _), (text, reason), ok in zip(items, outs, checks, strict=True)
           if reason != "stop" or not ok(text)]
    print(f"native corpus valid (temperature {temperature}, speculation {speculate}): "
          f"{len(items) - len(bad)}/{len(items)}")
    assert not bad, bad
    assert engine.scheduler.kv.num_free_blocks() == runner.num_blocks


def test_a_constrained_request_alone_equals_it_in_a_mixed_batch(runner: Any) -> None:
    schema = SCHEMAS[0][1]
    spec = StructuredSpec.json_schema(schema)
    target = chat(runner, "Reply with JSON.")
    greedy = SamplingParams(max_tokens=80, temperature=0, structured=spec)
    alone = generate(LLMEngine(runner), [target], [greedy])[0]
    mixed_prompts = [target] + [chat(runner, f"Tell me fact number {i}.") for i in range(15)]
    mixed_params = [greedy] + [SamplingParams(max_tokens=40, temperature=0.7, seed=i,
                                              structured=spec if i % 2 else None) for i in range(15)]
    in_batch = generate(LLMEngine(runner), mixed_prompts, mixed_params)[0]
    assert alone == in_batch and alone[1] == "stop" and _valid_json(schema, alone[0])


def test_n_samples_walk_their_own_grammar_and_abort_frees(runner: Any) -> None:
    spec = StructuredSpec.choices(["alpha", "beta", "gamma", "delta"])
    engine = LLMEngine(runner)
    engine.add_request("n", chat(runner, "Pick a word."), SamplingParams(max_tokens=10, temperature=1.0, n=4,
                                                                        seed=5, structured=spec))
    texts: dict[int, str] = {}
    while engine.has_unfinished():
        for out in engine.step():
            texts[out.index] = texts.get(out.index, "") + out.new_text
    assert sorted(texts) == [0, 1, 2, 3] and all(t in ("alpha", "beta", "gamma", "delta") for t in texts.values())
    engine.add_request("a", chat(runner, "Reply with JSON."), SamplingParams(max_tokens=80, structured=spec))
    engine.step()
    engine.abort_request("a")
    assert not engine.has_unfinished() and engine.scheduler.kv.num_free_blocks() == runner.num_blocks


# ---- preemption: the matcher follows its request -------------------------------------------------------

POOL = 8  # KV blocks of 16: the four 31-token prompts take all of it, so the second output token preempts


def padded_chat(runner: Any, text: str) -> list[int]:
    """The chat prompt padded with one-token words to 31 tokens mod 16: its second output token needs a
    new block, so with every block taken, decoding preempts after each request has accepted tokens."""
    for k in range(32):
        ids = chat(runner, text + " ok" * k)
        if len(ids) % 16 == 15:
            return ids
    raise AssertionError(f"no padding gives {text!r} a length of 15 mod 16")


@pytest.fixture(scope="module")
def float_runner() -> Any:
    return model_fixtures.runner()


@pytest.fixture(scope="module")
def preempt_case(float_runner: Any) -> tuple[list[list[int]], list[SamplingParams], list[dict]]:
    picked = [SCHEMAS[i] for i in (0, 1, 5, 9)]
    prompts = [padded_chat(float_runner, f"Reply with JSON describing {name}.") for name, _ in picked]
    assert sum(-(-len(p) // 16) for p in prompts) == POOL
    params = [SamplingParams(max_tokens=80, temperature=0, structured=StructuredSpec.json_schema(s)) for _, s in picked]
    return prompts, params, [s for _, s in picked]


@pytest.fixture(scope="module")
def preempt_alone(float_runner: Any, preempt_case: Any) -> list[tuple[str, str]]:
    """Each request on its own in the same small pool: it fits, nothing is preempted."""
    prompts, params, _ = preempt_case
    outs = []
    for prompt, p in zip(prompts, params, strict=True):
        engine = LLMEngine(SmallPool(float_runner, POOL))
        outs += generate(engine, [prompt], [p])
        assert engine.scheduler.num_preemptions == 0
    return outs


def _matchers_follow(engine: LLMEngine, preempted: list[tuple[str, int]]) -> None:
    """After a step: every live request's matcher has accepted exactly its output tokens (a matcher
    reset or replaced on preemption would not), and note the preempted ones with their output so far."""
    for req in engine.scheduler.requests.values():
        assert req.matcher is not None and req.matcher.accepted == req.num_output_tokens, \
            (req.req_id, req.matcher.accepted if req.matcher else None, req.num_output_tokens)
        if req.status is RequestStatus.PREEMPTED:
            preempted.append((req.req_id, req.num_output_tokens))


def test_preemption_keeps_each_matcher_with_its_request(float_runner: Any, preempt_case: Any,
                                                        preempt_alone: list[tuple[str, str]]) -> None:
    prompts, params, schemas = preempt_case
    engine = LLMEngine(SmallPool(float_runner, POOL))
    names = [f"s{i}" for i in range(len(prompts))]
    for name, prompt, p in zip(names, prompts, params, strict=True):
        engine.add_request(name, prompt, p)
    text, reason = dict.fromkeys(names, ""), dict.fromkeys(names, "")
    preempted: list[tuple[str, int]] = []
    while engine.has_unfinished():
        for out in engine.step():
            text[out.group_id] += out.new_text
            reason[out.group_id] = out.finish_reason or reason[out.group_id]
        _matchers_follow(engine, preempted)
    together = [(text[n], reason[n]) for n in names]
    assert engine.scheduler.num_preemptions > 0 and engine.stats()["num_preemptions"] > 0
    assert any(n > 0 for _, n in preempted), preempted  # preempted mid-output, grammar state in flight
    bad = [(t, r) for (t, r), s in zip(together, schemas, strict=True) if r != "stop" or not _valid_json(s, t)]
    assert not bad, bad
    assert together == preempt_alone
    assert engine.scheduler.kv.num_free_blocks() == POOL


def test_abort_frees_the_matcher_of_a_preempted_and_a_running_request(
        float_runner: Any, preempt_case: Any, preempt_alone: list[tuple[str, str]]) -> None:
    prompts, params, _ = preempt_case
    engine = LLMEngine(SmallPool(float_runner, POOL))
    names = [f"a{i}" for i in range(len(prompts))]
    for name, prompt, p in zip(names, prompts, params, strict=True):
        engine.add_request(name, prompt, p)
    text = dict.fromkeys(names, "")

    def status(s: RequestStatus) -> list[str]:
        return [r.req_id for r in engine.scheduler.requests.values() if r.status is s]

    for _ in range(20):
        for out in engine.step():
            text[out.group_id] += out.new_text
        if status(RequestStatus.PREEMPTED):
            break
    victims = [status(RequestStatus.PREEMPTED)[0], status(RequestStatus.RUNNING)[0]]
    refs = [weakref.ref(engine.scheduler.requests[v].matcher) for v in victims]
    aborted = [out for v in victims for out in engine.abort_request(v)]
    assert [(o.group_id, o.finish_reason) for o in aborted] == [(v, "abort") for v in victims]
    gc.collect()
    assert [r() for r in refs] == [None, None], "an aborted request's grammar matcher is still referenced"
    while engine.has_unfinished():
        for out in engine.step():
            text[out.group_id] += out.new_text
    kept = [i for i, n in enumerate(names) if n not in victims]
    assert [text[names[i]] for i in kept] == [preempt_alone[i][0] for i in kept]
    assert engine.scheduler.kv.num_free_blocks() == POOL and not engine._groups  # noqa: SLF001
