"""Rejection sampler of speculative decoding: the emitted tokens follow the target distribution.

Chi-square goodness of fit at a fixed seed: with 6 categories (5 degrees of freedom) the statistic
must stay below 20.52, the 0.999 quantile of chi2(5), i.e. a correct sampler fails by chance about
once in a thousand seeds, and this seed is fixed. A sampler that ignores q (accepting every draft),
or draws the replacement from p instead of max(p - q, 0), lands far above it (checked below).
"""

from __future__ import annotations

import torch

from serve.engine.batch import ScheduledSeq
from serve.sampling import Sampler, SampleRow
from serve.sampling.rejection import rejection_sample
from serve.sampling_params import SamplingParams
from serve.spec_decode.rejection_sampler import RejectionSampler

CHI2_5DOF_999 = 20.52  # 0.999 quantile of the chi-square distribution with 5 degrees of freedom
P0 = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.07, 0.03])
P1 = torch.tensor([0.05, 0.10, 0.05, 0.30, 0.30, 0.20])
P2 = torch.tensor([0.30, 0.10, 0.20, 0.10, 0.20, 0.10])
Q0 = torch.tensor([0.10, 0.10, 0.40, 0.10, 0.10, 0.20])  # deliberately unlike P0
Q1 = torch.tensor([0.30, 0.30, 0.10, 0.10, 0.10, 0.10])


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    expected = probs * n
    return float(((counts - expected) ** 2 / expected).sum())


def simulate(n: int, q: torch.Tensor | None, seed: int = 1234, sampler=rejection_sample
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """n verification rounds of k = 2 drafts (drawn from q, or fixed tokens 0 and 3 when q is None).
    Returns counts of the first emitted token, of the second one (when there is one), accepted drafts."""
    g = torch.Generator().manual_seed(seed)
    target = torch.stack([P0, P1, P2])
    first, second = torch.zeros(6), torch.zeros(6)
    accepted = 0
    for _ in range(n):
        drafts = torch.tensor([0, 3]) if q is None else torch.multinomial(q, 1, generator=g).squeeze(1)
        out = sampler(target, drafts, q, torch.rand(3, generator=g))
        accepted += len(out) - 1
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
    return first, second, accepted


def test_sampled_drafts_keep_the_target_distribution() -> None:
    q = torch.stack([Q0, Q1])
    first, second, accepted = simulate(6_000, q)
    assert chi2(first, P0) < CHI2_5DOF_999
    assert chi2(second, P1) < CHI2_5DOF_999
    # Acceptance of draft 0 is sum(min(p, q)) = 0.56 in expectation.
    assert abs(first.sum() - 6_000) < 1 and 0.5 < (second.sum() / 6_000) < 0.62
    assert accepted > 0


def test_point_mass_drafts_keep_the_target_distribution() -> None:
    first, second, _ = simulate(6_000, None)
    assert chi2(first, P0) < CHI2_5DOF_999
    assert chi2(second, P1) < CHI2_5DOF_999
    assert abs(second.sum() / 6_000 - float(P0[0])) < 0.03  # draft 0 accepted with probability p(0)


def test_a_sampler_that_ignores_q_fails_the_same_check() -> None:
    """The test's power: accepting whenever p(d) > 0 biases the output towards q."""
    def accept_all(target, drafts, q, u):
        return [*drafts.tolist(), 0]

    first, _, _ = simulate(3_000, torch.stack([Q0, Q1]), sampler=accept_all)
    assert chi2(first, P0) > 10 * CHI2_5DOF_999


def test_all_accepted_gives_a_bonus_token_and_a_rejection_never_repeats_the_draft() -> None:
    target = torch.stack([P0, P1, P2])
    out = rejection_sample(target, torch.tensor([0, 3]), None, torch.tensor([0.0, 0.0, 0.5]))
    assert out[:2] == [0, 3] and len(out) == 3
    out = rejection_sample(target, torch.tensor([0, 3]), None, torch.tensor([0.99, 0.0, 0.5]))
    assert len(out) == 1 and out[0] != 0


def _seq(req_id: str, drafts: list[int], params: SamplingParams) -> ScheduledSeq:
    return ScheduledSeq(req_id=req_id, token_ids=[5, *drafts], start_pos=10, block_table=[0],
                        num_logits=1 + len(drafts), params=params, prompt_token_ids=[1, 2],
                        output_token_ids=[5])


def test_runner_path_applies_temperature_per_row_and_seeds_reproduce() -> None:
    """Logits through the sampler's transforms (temperature 0.5) then rejection: first tokens follow
    softmax(logits / 0.5); the same seed replays the same tokens."""
    logits = torch.log(torch.stack([P0, P1, P2])) * 0.5  # softmax(x / 0.5) == P rows
    params = SamplingParams(temperature=0.5, seed=7)
    seq = _seq("r", [0, 3], params)
    rows = [SampleRow("r", params, [1, 2], [5], 0), SampleRow("r", params, [1, 2], [5, 0], 0),
            SampleRow("r", params, [1, 2], [5, 0, 3], 0)]

    def run(n: int) -> list[list[int]]:
        rs = RejectionSampler(Sampler("cpu", seed=0))
        return [[t.token_id for t in rs(logits.clone(), rows, [seq])["r"]] for _ in range(n)]

    outs = run(800)
    counts = torch.bincount(torch.tensor([o[0] for o in outs]), minlength=6).float()
    assert chi2(counts, P0) < CHI2_5DOF_999
    assert run(50) == outs[:50]
