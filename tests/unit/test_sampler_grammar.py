"""Grammar masks in the sampler, with a FAKE grammar (an allowed set that counts its fills): rows are
sampled first and checked, and masked only when the grammar refuses the token; that is exact (greedy:
the masked argmax; sampling: p conditioned on the allowed set, chi-square); rows that truncate, want
logprobs or verify drafts are masked first."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from serve.sampling import DraftGroup, Sampler, SampleRow
from serve.sampling.constraints import masks_first
from serve.sampling_params import SamplingParams

V = 64
CHI2_2DOF_999 = 13.82  # 0.999 quantile of chi2 with 2 degrees of freedom


class Allowed:
    """FAKE grammar: a fixed allowed set (optionally one forced token); counts checks and fills."""

    def __init__(self, allowed: set[int], forced: int | None = None, num_rows: int = 1) -> None:
        self.allowed, self._forced, self.num_rows, self.vocab_size = allowed, forced, num_rows, V
        self.fills = self.checks = 0

    def forced(self) -> int | None:
        return self._forced

    def confirms(self, token: int) -> bool:
        self.checks += 1
        return token in self.allowed

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.fills += 1
        words = np.zeros(bitmask.shape[1], dtype=np.uint32)
        for t in self.allowed:
            words[t // 32] |= np.uint32(1 << (t % 32))
        for j in range(self.num_rows):
            bitmask[row + j] = torch.from_numpy(words.view(np.int32))


def row(rid: str = "r", **kw: Any) -> SampleRow:
    return SampleRow(rid, SamplingParams(**kw), [], [])


def masked_argmax(lg: torch.Tensor, allowed: set[int]) -> int:
    return max(allowed, key=lambda t: float(lg[t]))


def test_an_accepted_argmax_never_fills_a_mask() -> None:
    lg = torch.arange(V, dtype=torch.float32).unsqueeze(0)  # argmax: V - 1
    g = Allowed({V - 1, 3})
    s = Sampler()
    assert s(lg, [row(temperature=0.0)], {0: g})[0].token_id == V - 1
    assert (g.checks, g.fills, s.masked_rows, s.checked_rows) == (1, 0, 0, 1)


def test_a_refused_argmax_gets_the_masked_argmax() -> None:
    lg = torch.arange(V, dtype=torch.float32).unsqueeze(0)
    g = Allowed({5, 40, 7})
    s = Sampler()
    assert s(lg.clone(), [row(temperature=0.0)], {0: g})[0].token_id == 40
    assert (g.fills, s.masked_rows) == (1, 1)


def test_a_forced_token_needs_no_check_and_no_mask() -> None:
    g = Allowed({12}, forced=12)
    assert Sampler()(torch.randn(1, V), [row(temperature=0.0)], {0: g})[0].token_id == 12
    assert (g.checks, g.fills) == (0, 0)


def test_lazy_greedy_equals_masking_first_in_a_mixed_batch() -> None:
    """Constrained and free rows, greedy with and without bias; the caller's buffer stays as it was."""
    gen = torch.Generator().manual_seed(0)
    lg = torch.randn(12, V, generator=gen) * 3
    keep = lg.clone()
    grammars = {i: Allowed(set(torch.randperm(V, generator=gen)[:8].tolist())) for i in range(0, 12, 2)}
    rows = [row(f"r{i}", temperature=0.0, logit_bias={3: 1.5} if i % 3 == 0 else {}) for i in range(12)]
    got = [t.token_id for t in Sampler()(lg, rows, grammars, scratch=False)]
    assert torch.equal(lg, keep)
    biased = lg.clone()
    biased[::3, 3] += 1.5
    for i in range(12):
        want = masked_argmax(biased[i], grammars[i].allowed) if i in grammars else int(biased[i].argmax())
        assert got[i] == want, i
    assert sum(g.fills for g in grammars.values()) <= len(grammars)


def test_lazy_sampling_draws_from_the_masked_distribution() -> None:
    """Sample first, resample on refusal: P(t) = p(t) / p(allowed) for allowed t (chi-square), and rows
    whose draw was allowed never filled a mask."""
    lg = torch.log(torch.tensor([[0.30, 0.25, 0.20, 0.10, 0.10, 0.05] + [1e-9] * (V - 6)]))
    allowed = {1, 3, 5}
    n = 6000
    grammars = {i: Allowed(allowed) for i in range(n)}
    s = Sampler(seed=5)
    toks = [t.token_id for t in s(lg.repeat(n, 1), [row(f"r{i}", temperature=1.0) for i in range(n)], grammars)]
    counts = np.bincount(toks, minlength=V)
    assert counts[[t for t in range(V) if t not in allowed]].sum() == 0
    p = np.array([0.25, 0.10, 0.05]) / 0.40
    observed = counts[[1, 3, 5]]
    assert float(((observed - p * n) ** 2 / (p * n)).sum()) < CHI2_2DOF_999, observed
    fills = sum(g.fills for g in grammars.values())
    assert fills == s.masked_rows and 0.5 * n < fills < 0.7 * n  # refused with p = 0.6


@pytest.mark.parametrize("kw", [{"temperature": 1.0, "top_k": 1}, {"temperature": 1.0, "top_p": 0.5},
                                {"temperature": 1.0, "min_p": 0.9}, {"temperature": 0.0, "logprobs": 2}])
def test_rows_that_truncate_or_want_logprobs_are_masked_first(kw: dict[str, Any]) -> None:
    """Truncating an unmasked row would keep only the refused favourite; masked first, the best allowed
    token survives. Logprobs (raw) describe the masked distribution."""
    lg = torch.tensor([[9.0, 1.0, 2.0, 0.5] + [-5.0] * (V - 4)])
    g = Allowed({1, 2})
    tok = Sampler(seed=0)(lg.clone(), [row(**kw)], {0: g})[0]
    assert masks_first(SamplingParams(**kw)) and g.fills == 1 and g.checks == 0
    assert tok.token_id == 2
    if tok.logprob is not None:
        ref = torch.log_softmax(torch.tensor([1.0, 2.0]), -1)
        assert tok.logprob == pytest.approx(float(ref[1]), abs=1e-5)
        assert dict(tok.top_logprobs) == pytest.approx({2: float(ref[1]), 1: float(ref[0])}, abs=1e-5)


def test_verify_rows_are_masked_first_per_draft_state() -> None:
    """A verify group's grammar fills all its rows before sampling; a draft outside them is rejected."""
    lg = torch.zeros(3, V)
    lg[:, 10] = 5.0  # the model likes token 10 everywhere
    g = Allowed({10, 11}, num_rows=3)
    got = Sampler(seed=1).verify(lg.clone(), [row("v", temperature=0.0)] * 3, [DraftGroup([10, 12])], {0: g})
    assert [t.token_id for t in got[0]] == [10, 10] and g.fills == 1 and g.checks == 0
