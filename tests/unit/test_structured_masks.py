"""The engine's side of structured output, with a FAKE matcher (the test is about which rows get
filled from which grammar state, not about grammars): rows per sequence in batch order, verify rows
walked through the drafts and rolled back, a refused draft ends the walk; and the sampler's bitmask
application keeps exactly the allowed tokens."""

from __future__ import annotations

import torch

from serve.engine.batch import ScheduledSeq
from serve.engine.request import Request
from serve.engine.structured_masks import step_grammars
from serve.sampling.constraints import apply_masks
from serve.sampling_params import SamplingParams
from serve.structured.bitmask import apply_bitmask_torch


class PrefixMatcher:
    """FAKE grammar: the output must spell `target`; position p allows only target[p]."""

    def __init__(self, target: list[int]) -> None:
        self.target, self.pos, self.fills = target, 0, []

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.fills.append((row, self.pos))
        bitmask[row].zero_()
        tok = self.target[self.pos]
        bitmask[row, tok // 32] = 1 << (tok % 32)

    def accept(self, token: int) -> bool:
        if self.target[self.pos] != token:
            return False
        self.pos += 1
        return True

    def rollback(self, n: int) -> None:
        self.pos -= n

    def valid_prefix(self, tokens: list[int]) -> int:
        n = 0
        while n < len(tokens) and self.pos + n < len(self.target) and tokens[n] == self.target[self.pos + n]:
            n += 1
        return n


def seq(req_id: str, tokens: list[int], num_logits: int) -> ScheduledSeq:
    return ScheduledSeq(req_id, tokens, 0, [0], num_logits, SamplingParams(), [], [])


def request(req_id: str, matcher: object | None) -> Request:
    r = Request(req_id, [1], SamplingParams(), 8)
    r.matcher = matcher
    return r


def test_rows_follow_the_batch_and_verify_rows_walk_the_drafts() -> None:
    m_a, m_c = PrefixMatcher([5, 6, 7, 8]), PrefixMatcher([40, 41])
    seqs = [seq("a", [9, 5, 6, 99], 4), seq("b", [3], 1), seq("mid", [1, 2, 3], 0), seq("c", [2, 40], 2)]
    reqs = {"a": request("a", m_a), "b": request("b", None), "mid": request("mid", None), "c": request("c", m_c)}
    grammars = step_grammars(seqs, reqs, lambda: 64)
    assert grammars is not None and sorted(grammars) == [0, 5]  # each sequence's first row
    assert [g.num_rows for g in grammars.values()] == [4, 2]
    bitmask = torch.full((7, 2), -1, dtype=torch.int32)
    for row, g in grammars.items():
        g.fill(bitmask, row)
    # a: rows 0-3 verify drafts [5, 6, 99]: states 0, 1, 2; draft 99 is refused, so row 3 stays open
    assert m_a.fills == [(0, 0), (1, 1), (2, 2)] and m_a.pos == 0
    # c: rows 5-6, one draft (40) accepted tentatively then rolled back
    assert m_c.fills == [(5, 0), (6, 1)] and m_c.pos == 0
    assert (bitmask[4] == -1).all() and (bitmask[3] == -1).all()  # b unconstrained; a's row after a refusal
    logits = torch.zeros(7, 64)
    apply_bitmask_torch(logits, bitmask)
    assert [int(torch.isfinite(r).nonzero().flatten()[0]) for r in logits[:3]] == [5, 6, 7]
    assert int(torch.isfinite(logits[0]).sum()) == 1 and bool(torch.isfinite(logits[4]).all())
    # The sampler's own application of the same grammars (filling again from the rolled-back states).
    again = torch.zeros(7, 64)
    apply_masks(again, grammars)
    assert torch.equal(torch.isfinite(again), torch.isfinite(logits))


def test_no_constrained_sequence_means_no_filler() -> None:
    assert step_grammars([seq("x", [1], 1)], {"x": request("x", None)}, lambda: 64) is None


def test_the_fast_cpu_mask_path_equals_unpacking_the_bits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 96, generator=g)
    bitmask = torch.randint(-2**31, 2**31 - 1, (5, 3), dtype=torch.int32, generator=g)
    fast = logits.clone()
    apply_bitmask_torch(fast, bitmask)  # contiguous CPU: llguidance's loop
    bits = ((bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).bool().view(5, -1)
    assert torch.equal(fast, logits.masked_fill(~bits, float("-inf")))
    slow = logits.t().contiguous().t()  # non-contiguous: the tensor-ops path
    apply_bitmask_torch(slow, bitmask)
    assert torch.equal(slow, fast)
