"""Prompt-lookup speculation through the real llama.cpp engine on the bundled GGUF: greedy output equals
the plain path token for token (alone, in a batch mixed with a plain request, with a stop string, at
max_tokens), and each slot's KV holds exactly the tokens it kept.

llama.cpp computes a prompt's last token differently when it is part of a long prefill batch than when
it is recomputed alone on a prefix-cache hit (logits differ in the last bits, enough to flip a near-tie
greedy choice), so every compared run is a cache hit: the module warms each prompt first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve.backends.llamacpp_engine import Finished, Job, LlamaCppEngine, llama_cpp
from serve.backends.llamacpp_spec import PromptLookupConfig
from serve.sampling_params import SamplingParams
from tests.unit.model_fixtures import llamacpp_engine

pytestmark = pytest.mark.slow

_PASSAGE = (Path(__file__).parents[2] / "benchmarks/data/kjv_genesis37-45_ruth.txt").read_text()[2000:2900]
MAX = 48


@dataclass
class Run:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    finished: Finished | None = None

    def emit(self, kind: str, payload: object) -> None:
        if kind == "token":
            text, token, _, _ = payload  # type: ignore[misc]
            self.tokens.append(token)
            self.text += text
        else:
            assert isinstance(payload, Finished)
            self.finished = payload
            self.text += payload.tail
            self.done.set()


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    cfg = PromptLookupConfig(num_speculative_tokens=4, prompt_lookup_max=4, prompt_lookup_min=1)
    yield from llamacpp_engine(n_parallel=2, n_ctx_per_seq=1024, n_threads=1, spec=cfg)


@pytest.fixture(scope="module")
def prompts(engine: LlamaCppEngine) -> dict[str, list[int]]:
    """Two input-grounded prompts sharing no prefix (so each keeps its own slot), warmed once."""
    chat = f"<|im_start|>user\nRepeat this passage exactly:\n\n{_PASSAGE}<|im_end|>\n<|im_start|>assistant\n"
    p = {"chat": engine.tokenize(chat, True), "raw": engine.tokenize(_PASSAGE[:500] + _PASSAGE[:300], False)}
    assert p["chat"][0] != p["raw"][0]
    for name in p:
        _go(engine, [(p[name], SamplingParams(max_tokens=1, temperature=0.0), False)])
    return p


def _go(engine: LlamaCppEngine, jobs: list[tuple[list[int], SamplingParams, bool]]) -> list[Run]:
    runs = [Run() for _ in jobs]
    for i, ((prompt, params, speculate), run) in enumerate(zip(jobs, runs, strict=True)):
        engine.submit(Job(f"r{i}", prompt, params, run.emit, speculate=speculate))
    for run in runs:
        assert run.done.wait(120)
    return runs


def _greedy(**kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=kw.pop("max_tokens", MAX), temperature=0.0, **kw)  # type: ignore[arg-type]


def _accepted(engine: LlamaCppEngine) -> int:
    return int(engine.stats()["spec_decode_num_accepted_tokens"])


def _assert_kv_matches(engine: LlamaCppEngine, prompt: list[int], run: Run) -> None:
    """The slot holding this prompt keeps prompt + output except the last token (never fed back)."""
    slot = next(s for s in range(engine.opts.n_parallel) if engine.slot_tokens[s][: len(prompt)] == prompt)
    assert engine.slot_tokens[slot] == prompt + run.tokens[:-1]
    pos_max = llama_cpp.llama_memory_seq_pos_max(engine.ctx.memory, slot)
    assert pos_max + 1 == len(engine.slot_tokens[slot])


def test_greedy_alone_equals_plain(engine: LlamaCppEngine, prompts: dict[str, list[int]]) -> None:
    # ignore_eos: where greedy decoding meets EOS depends on the CPU's rounding (43 tokens with AVX-512
    # numerics, past MAX with AVX2); the comparison must reach max_tokens on every CPU.
    for name in ("chat", "raw"):
        (plain,) = _go(engine, [(prompts[name], _greedy(ignore_eos=True), False)])
        before = _accepted(engine)
        (spec,) = _go(engine, [(prompts[name], _greedy(ignore_eos=True), True)])
        assert _accepted(engine) > before, "no draft was accepted: the test would not exercise verify"
        assert spec.tokens == plain.tokens and spec.text == plain.text
        assert spec.finished is not None and spec.finished.reason == "length" == plain.finished.reason
        assert len(spec.tokens) == MAX
        _assert_kv_matches(engine, prompts[name], spec)


def test_mixed_batch_equals_plain(engine: LlamaCppEngine, prompts: dict[str, list[int]]) -> None:
    """A speculating and a plain request decode in the same llama_decode batches."""
    chat, raw = prompts["chat"], prompts["raw"]
    (ref_chat,) = _go(engine, [(chat, _greedy(), False)])
    (ref_raw,) = _go(engine, [(raw, _greedy(), False)])
    for spec_chat in (True, False):
        a, b = _go(engine, [(chat, _greedy(), spec_chat), (raw, _greedy(), not spec_chat)])
        assert a.tokens == ref_chat.tokens and b.tokens == ref_raw.tokens
        _assert_kv_matches(engine, chat, a)
        _assert_kv_matches(engine, raw, b)


def test_stop_string_and_max_tokens_as_plain(engine: LlamaCppEngine, prompts: dict[str, list[int]]) -> None:
    prompt = prompts["raw"]
    (ref,) = _go(engine, [(prompt, _greedy(), False)])
    stop = ref.text[len(ref.text) // 2 :][:6]  # a string that first appears mid-output (or earlier)
    assert stop.strip()
    for params, reason in ((_greedy(stop=(stop,)), "stop"), (_greedy(max_tokens=MAX // 2 + 1), "length")):
        (plain,) = _go(engine, [(prompt, params, False)])
        (spec,) = _go(engine, [(prompt, params, True)])
        assert spec.tokens == plain.tokens and spec.text == plain.text
        assert spec.finished is not None and plain.finished is not None
        assert spec.finished.reason == plain.finished.reason == reason
        assert spec.finished.completion_tokens == len(spec.tokens) < MAX
        assert reason != "stop" or stop not in spec.text
        _assert_kv_matches(engine, prompt, spec)


def test_sampled_speculation_runs_and_respects_limits(engine: LlamaCppEngine,
                                                      prompts: dict[str, list[int]]) -> None:
    params = SamplingParams(max_tokens=MAX, temperature=0.7, seed=3)
    before = engine.stats()["spec_decode_num_drafts"]
    (run,) = _go(engine, [(prompts["chat"], params, True)])
    assert run.finished is not None and run.finished.reason in ("length", "stop")
    assert len(run.tokens) <= MAX
    assert engine.stats()["spec_decode_num_drafts"] > before
    _assert_kv_matches(engine, prompts["chat"], run)


def test_per_request_num_speculative_tokens(engine: LlamaCppEngine, prompts: dict[str, list[int]]) -> None:
    """The request's num_speculative_tokens caps k (0: off), and output stays the plain output."""
    prompt = prompts["chat"]
    (plain,) = _go(engine, [(prompt, _greedy(), False)])
    for k in (0, 1):
        before = dict(engine.stats())
        (run,) = _go(engine, [(prompt, _greedy(num_speculative_tokens=k), True)])
        after = engine.stats()
        drafts = after["spec_decode_num_drafts"] - before["spec_decode_num_drafts"]
        tokens = after["spec_decode_num_draft_tokens"] - before["spec_decode_num_draft_tokens"]
        assert run.tokens == plain.tokens
        assert (drafts == 0) if k == 0 else (0 < drafts == tokens)
    assert after["spec_decode_num_accepted_tokens_per_pos.0"] > 0
