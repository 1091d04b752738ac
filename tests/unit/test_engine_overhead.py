"""Micro benchmark: control-plane cost of one engine step (schedule + update + outputs) with 32
requests decoding, on the FAKE runner in its O(1) mode (no model, no KV simulation).

Run `pytest -s tests/unit/test_engine_overhead.py` to see the figures. The assertion is a loose
floor (50x below what this machine measures) so that only an accidental O(n^2) or per-step history
copy fails it, not a noisy neighbour.
"""

from __future__ import annotations

import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from serve.engine.config import SchedulerConfig
from serve.engine.engine import LLMEngine
from serve.sampling_params import SamplingParams
from tests.unit.fake_runner import FakePagedRunner

NUM_REQS = 32


def byte_level_tokenizer() -> Tokenizer:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["warm up text"], trainers.BpeTrainer(
        vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return t


def steps_per_second(tokenizer: Tokenizer | None, num_steps: int = 300) -> float:
    runner = FakePagedRunner(num_blocks=4096, block_size=16, max_model_len=4096, check=False)
    runner.tokenizer = tokenizer
    eng = LLMEngine(runner, SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512))
    params = SamplingParams(max_tokens=2000, ignore_eos=True, stop=("zzz",) if tokenizer else ())
    for i in range(NUM_REQS):
        eng.add_request(f"r{i}", [i + 1] * 128, params)
    while len(eng.scheduler.running) < NUM_REQS or eng.last_step_size < NUM_REQS or \
            any(r.num_computed_tokens < r.num_prompt_tokens for r in eng.scheduler.running):
        eng.step()
    t0 = time.perf_counter()
    for _ in range(num_steps):
        assert len(eng.step()) == NUM_REQS
    return num_steps / (time.perf_counter() - t0)


def test_step_overhead_at_32_running_requests() -> None:
    plain = steps_per_second(None)
    detok = steps_per_second(byte_level_tokenizer())
    print(f"\nengine step overhead, {NUM_REQS} decoding requests: {plain:.0f} steps/s "
          f"({1e6 / plain:.0f} us/step) without detokenizer; {detok:.0f} steps/s "
          f"({1e6 / detok:.0f} us/step) with incremental detokenizer + stop string")
    assert plain > 200 and detok > 100
