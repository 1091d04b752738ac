"""ModelRunner equivalences on the real bundled model (float32): batched == one at a time, chunked
prefill == unchunked, prefix blocks reused from the cache == recomputed, mixed prefill/decode steps."""

from __future__ import annotations

import math

import pytest

from serve.engine.batch import SampledToken, ScheduledSeq, StepBatch
from serve.sampling_params import SamplingParams
from tests.unit.model_fixtures import runner

GREEDY = SamplingParams(temperature=0.0, logprobs=3)
PROMPTS = [
    [1, 504, 3458, 282, 4649, 314, 3034, 30, 378, 3458],
    [1, 23962, 28, 12325, 288, 253, 1345, 30] * 5,
    list(range(300, 337)),
]


class Seq:
    """Drives one request through prefill chunks and greedy decode steps, as a scheduler would."""

    def __init__(self, rid: str, prompt: list[int], table: list[int], chunk: int, cached: int = 0) -> None:
        self.rid, self.prompt, self.table, self.chunk = rid, prompt, table, chunk
        self.pos = cached  # tokens already in the KV cache
        self.out: list[SampledToken] = []

    def next_seq(self) -> ScheduledSeq:
        if self.pos < len(self.prompt):
            toks = self.prompt[self.pos:self.pos + self.chunk]
            last = self.pos + len(toks) == len(self.prompt)
            return ScheduledSeq(self.rid, toks, self.pos, self.table, int(last), GREEDY, self.prompt,
                                [t.token_id for t in self.out])
        outs = [t.token_id for t in self.out]
        return ScheduledSeq(self.rid, [outs[-1]], self.pos, self.table, 1, GREEDY, self.prompt, outs)

    def advance(self, scheduled: ScheduledSeq, sampled: list[SampledToken]) -> None:
        self.pos += len(scheduled.token_ids)
        self.out.extend(sampled)


def run_together(seqs: list[Seq], max_new: int) -> list[list[SampledToken]]:
    r = runner()
    while any(len(s.out) < max_new for s in seqs):
        active = [s for s in seqs if len(s.out) < max_new]
        scheduled = [s.next_seq() for s in active]
        result = r.execute(StepBatch(scheduled))
        for s, sch in zip(active, scheduled, strict=True):
            s.advance(sch, result.sampled[s.rid])
    r.execute(StepBatch([], finished_req_ids=[s.rid for s in seqs]))
    return [s.out for s in seqs]


def blocks(start: int, n: int = 8) -> list[int]:
    return list(range(start, start + n))


def assert_same(a: list[SampledToken], b: list[SampledToken], tol: float = 1e-3) -> None:
    assert [t.token_id for t in a] == [t.token_id for t in b]
    for x, y in zip(a, b, strict=True):
        assert math.isclose(x.logprob, y.logprob, abs_tol=tol)
        assert [i for i, _ in x.top_logprobs] == [i for i, _ in y.top_logprobs]


@pytest.mark.slow
def test_batched_equals_one_at_a_time() -> None:
    alone = [run_together([Seq(f"a{i}", p, blocks(10 * i), 512)], 6)[0] for i, p in enumerate(PROMPTS)]
    together = run_together([Seq(f"b{i}", p, blocks(100 + 10 * i), 512) for i, p in enumerate(PROMPTS)], 6)
    for a, b in zip(alone, together, strict=True):
        assert_same(a, b)


@pytest.mark.slow
def test_chunked_prefill_equals_unchunked_with_decodes_in_the_same_step() -> None:
    whole = run_together([Seq("w0", PROMPTS[1], blocks(0), 512), Seq("w1", PROMPTS[2], blocks(10), 512)], 5)
    # Chunks of 7 do not align with 16-token blocks; w1's prompt finishes earlier, so its decodes share
    # steps with the other's prefill chunks.
    chunked = run_together([Seq("c0", PROMPTS[1], blocks(20), 7), Seq("c1", PROMPTS[2], blocks(30), 13)], 5)
    for a, b in zip(whole, chunked, strict=True):
        assert_same(a, b)


@pytest.mark.slow
def test_prefix_in_cache_equals_recompute() -> None:
    prefix = PROMPTS[1][:32]  # two full blocks
    full = prefix + [9907, 314, 253, 3458, 30]
    run_together([Seq("p", prefix, [40, 41, 42], 512)], 1)  # writes blocks 40, 41
    hit = run_together([Seq("h", full, [40, 41, 50, 51], 512, cached=32)], 6)[0]
    miss = run_together([Seq("m", full, blocks(60), 512)], 6)[0]
    assert_same(hit, miss)


def test_mid_prompt_chunk_returns_no_tokens() -> None:
    r = runner()
    seq = ScheduledSeq("mid", PROMPTS[0][:5], 0, [70], 0, GREEDY, PROMPTS[0], [])
    assert r.execute(StepBatch([seq])).sampled == {"mid": []}


@pytest.mark.parametrize("bad", [
    dict(token_ids=[10**9]), dict(block_table=[10**6]), dict(start_pos=5000), dict(num_logits=3),
])
def test_bad_batch_is_a_clear_error(bad: dict) -> None:
    fields = dict(req_id="x", token_ids=[5, 6], start_pos=0, block_table=[1], num_logits=1, params=GREEDY,
                  prompt_token_ids=[5, 6], output_token_ids=[])
    fields.update(bad)
    with pytest.raises(ValueError):
        runner().execute(StepBatch([ScheduledSeq(**fields)]))
