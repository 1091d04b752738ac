"""LLMEngine over the FAKE paged runner (tests/unit/fake_runner.py): step loop, outputs, stop
strings through a real byte-level tokenizer, n > 1, runner failures."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from serve.engine.batch import RunnerOutput, StepBatch
from serve.engine.config import SchedulerConfig
from serve.engine.engine import LLMEngine
from serve.engine.request import RequestRejected
from serve.sampling_params import SamplingParams
from tests.unit.fake_runner import FakePagedRunner, reference_continuation

PROMPTS = [[1, 2, 3], list(range(40, 75)), [9] * 13]


def engine(num_blocks: int = 64, tokenizer: object = None, **cfg: object) -> LLMEngine:
    runner = FakePagedRunner(num_blocks, block_size=4)
    runner.tokenizer = tokenizer
    return LLMEngine(runner, SchedulerConfig(**cfg))  # type: ignore[arg-type]


def tokens(outs: list) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def test_generate_matches_the_reference_and_reports_finish_and_counts() -> None:
    eng = engine(max_num_batched_tokens=16)
    results = eng.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    for prompt, outs in zip(PROMPTS, results, strict=True):
        assert tokens(outs) == reference_continuation(prompt, 6)
        assert [o.finished for o in outs].count(True) == 1 and outs[-1].finish_reason == "length"
        assert outs[-1].num_output_tokens == 6 and outs[-1].num_prompt_tokens == len(prompt)
    assert eng.stats()["num_requests_running"] == 0 and eng.stats()["kv_cache_usage"] == 0.0


def test_a_repeated_prompt_reports_cached_tokens() -> None:
    eng = engine()
    eng.generate([PROMPTS[1]], SamplingParams(max_tokens=2))
    again = eng.generate([PROMPTS[1]], SamplingParams(max_tokens=2))[0]
    assert again[-1].num_cached_tokens == 32
    assert eng.stats()["prefix_cache_hits"] == 32


def test_n_samples_come_back_under_one_group_with_their_indices() -> None:
    eng = engine()
    ids = eng.add_request("g", PROMPTS[1], SamplingParams(max_tokens=3, n=3, ignore_eos=True))
    assert ids == ["g#0", "g#1", "g#2"]
    seen: dict[int, list[int]] = {}
    while eng.has_unfinished():
        for out in eng.step():
            assert out.group_id == "g"
            seen.setdefault(out.index, []).extend(out.new_token_ids)
    assert seen == {i: reference_continuation(PROMPTS[1], 3) for i in range(3)}
    eng.add_request("x", [1], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request("x", [1], SamplingParams(max_tokens=1))


def test_rejection_is_raised_before_anything_is_queued() -> None:
    eng = engine(num_blocks=2)
    with pytest.raises(RequestRejected):
        eng.add_request("big", list(range(20)), SamplingParams(max_tokens=5))
    assert not eng.has_unfinished()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t.train_from_iterator(["plain ascii text"], trainer)
    return t


def test_stop_strings_cut_the_text_and_finish_with_stop(tok: Tokenizer) -> None:
    prompt = PROMPTS[1]
    ref_ids = reference_continuation(prompt, 40)
    full = tok.decode(ref_ids)
    stop = next(full[i:i + 3] for i in range(8, len(full)) if "\ufffd" not in full[i - 8:i + 3])
    eng = engine(tokenizer=tok)
    outs = eng.generate([prompt], SamplingParams(max_tokens=40, ignore_eos=True, stop=(stop,)))[0]
    text = "".join(o.new_text for o in outs)
    assert text == full[:full.find(stop)]
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == stop


class FlakyRunner(FakePagedRunner):
    """FAKE runner whose second call raises once (a transient fault of the whole batch)."""

    def execute(self, batch: StepBatch) -> RunnerOutput:
        if len(self.batches) == 1:
            self.batches.append(batch)
            raise RuntimeError("device lost")
        return super().execute(batch)


class PoisonRunner(FakePagedRunner):
    """FAKE runner that fails every batch holding a sequence whose prompt starts with `poison`."""

    def __init__(self, *args, poison: int = 99, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.poison = poison

    def execute(self, batch: StepBatch) -> RunnerOutput:
        bad = [s.req_id for s in batch.seqs if s.prompt_token_ids[0] == self.poison]
        if bad:
            raise RuntimeError(f"cannot run {bad[0]}")
        return super().execute(batch)


def test_a_failing_sequence_fails_alone_and_the_batch_goes_on() -> None:
    eng = LLMEngine(PoisonRunner(64, block_size=4), SchedulerConfig())
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    eng.add_request("good", [4, 5, 6], params)
    eng.add_request("bad", [99, 1, 2], params)
    eng.add_request("good2", [7, 8], params)
    outs: dict[str, list] = {"good": [], "bad": [], "good2": []}
    while eng.has_unfinished():
        for o in eng.step():
            outs[o.group_id].append(o)
    assert [o.error for o in outs["bad"]] == ["model runner failed: cannot run bad"]
    assert outs["bad"][0].finish_reason == "abort"
    assert tokens(outs["good"]) == reference_continuation([4, 5, 6], 6)
    assert tokens(outs["good2"]) == reference_continuation([7, 8], 6)
    assert all(o.error is None for o in outs["good"] + outs["good2"])
    assert eng.scheduler.kv.num_free_blocks() == 64


def test_a_transient_batch_failure_is_retried_per_sequence_without_losing_tokens() -> None:
    eng = LLMEngine(FlakyRunner(32, block_size=4), SchedulerConfig())
    [outs] = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=5, ignore_eos=True))
    assert all(o.error is None for o in outs)
    assert tokens(outs) == reference_continuation([1, 2, 3], 5)
    assert not eng.has_unfinished() and eng.scheduler.kv.num_free_blocks() == 32


def test_prompt_ids_outside_the_vocabulary_are_rejected_before_any_step() -> None:
    eng = LLMEngine(FakePagedRunner(32, block_size=4, vocab_size=101), SchedulerConfig())
    for bad, param in (([5, 101], "prompt"), ([-1], "prompt")):
        with pytest.raises(RequestRejected) as e:
            eng.add_request("x", bad, SamplingParams(max_tokens=2))
        assert e.value.param == param
    with pytest.raises(RequestRejected) as e:
        eng.add_request("y", [1], SamplingParams(max_tokens=2, logit_bias={500: 1.0}))
    assert e.value.param == "logit_bias"
    assert not eng.has_unfinished()


def test_abort_request_by_group_id_frees_every_sample() -> None:
    eng = engine()
    eng.add_request("g", PROMPTS[1], SamplingParams(max_tokens=50, n=2, ignore_eos=True))
    eng.step()
    eng.step()
    outs = eng.abort_request("g")
    assert sorted(o.index for o in outs) == [0, 1] and all(o.finish_reason == "abort" for o in outs)
    assert eng.scheduler.kv.num_free_blocks() == 64 and not eng.has_unfinished()
    assert eng.abort_request("g") == []
