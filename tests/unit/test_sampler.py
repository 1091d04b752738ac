"""Sampler knobs on hand-made logits: each changes the distribution as defined; seeds reproduce.
Penalty tests read the processed distribution through processed_logprobs (what was sampled from)."""

from __future__ import annotations

import math

import pytest
import torch

from serve.sampling import Sampler, SampleRow
from serve.sampling_params import SamplingParams

V = 8
PROCESSED = "processed_logprobs"


def row(rid: str = "r", prompt: tuple[int, ...] = (), out: tuple[int, ...] = (), idx: int = 0, **kw) -> SampleRow:
    return SampleRow(rid, SamplingParams(**kw), list(prompt), list(out), idx)


def logits(*vals: float) -> torch.Tensor:
    return torch.tensor([list(vals) + [-10.0] * (V - len(vals))], dtype=torch.float32)


def freqs(lg: torch.Tensor, r: SampleRow, n: int = 3000) -> torch.Tensor:
    """Empirical distribution of n draws (one batch of n identical rows)."""
    s = Sampler(seed=0)
    toks = s(lg.repeat(n, 1), [r] * n)
    return torch.bincount(torch.tensor([t.token_id for t in toks]), minlength=V).float() / n


def test_greedy_is_argmax_fast_path() -> None:
    lg = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert [t.token_id for t in Sampler()(lg, [row(temperature=0.0)] * 2)] == [1, 0]


def test_temperature_sampling_matches_softmax() -> None:
    lg = logits(1.0, 0.5, 0.0)
    f = freqs(lg, row(temperature=0.5))
    expected = torch.softmax(lg[0] / 0.5, -1)
    assert torch.allclose(f, expected, atol=0.03)


def test_top_k_keeps_only_k_best() -> None:
    f = freqs(logits(1.0, 0.9, 0.8, 0.7), row(temperature=1.0, top_k=2))
    assert f[2:].sum() == 0 and f[0] > 0.4 and f[1] > 0.4


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    lg = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * (V - 4)]))
    f = freqs(lg, row(temperature=1.0, top_p=0.7))  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: keep two
    assert f[2:].sum() == 0
    assert math.isclose(float(f[0]), 0.5 / 0.8, abs_tol=0.03)


def test_min_p_drops_tokens_below_fraction_of_max() -> None:
    lg = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * (V - 4)]))
    f = freqs(lg, row(temperature=1.0, min_p=0.35))  # threshold 0.175: keep 0.5 and 0.3
    assert f[2:].sum() == 0 and f[1] > 0.25


def test_repetition_penalty_hf_semantics() -> None:
    lg = logits(2.0, -1.0, 1.5)
    r = row(temperature=0.0, repetition_penalty=2.0, prompt=(0,), out=(1,), logprobs=V - 1)
    tok = Sampler(logprobs_mode=PROCESSED)(lg.clone(), [r])[0]
    got = dict(tok.top_logprobs)
    processed = torch.tensor([1.0, -2.0, 1.5] + [-10.0] * (V - 3))  # 2/2, -1*2, unchanged
    ref = torch.log_softmax(processed, -1)
    assert tok.token_id == 2
    for t in range(3):
        assert math.isclose(got[t], float(ref[t]), abs_tol=1e-5)


def test_frequency_and_presence_penalties_count_outputs_only() -> None:
    lg = logits(1.0, 1.0, 1.0)
    r = row(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.25, prompt=(2, 2, 2), out=(0, 0, 1),
            logprobs=3)
    tok = Sampler(logprobs_mode=PROCESSED)(lg.clone(), [r])[0]
    processed = torch.tensor([1.0 - 1.0 - 0.25, 1.0 - 0.5 - 0.25, 1.0] + [-10.0] * (V - 3))
    ref = torch.log_softmax(processed, -1)
    assert tok.token_id == 2
    assert math.isclose(tok.logprob, float(ref[2]), abs_tol=1e-5)
    assert [t for t, _ in tok.top_logprobs] == [2, 1, 0]


def test_logit_bias_shifts_choice() -> None:
    lg = logits(1.0, 0.0)
    assert Sampler()(lg.clone(), [row(temperature=0.0, logit_bias={1: 5.0})])[0].token_id == 1
    f = freqs(logits(0.0, 0.0), row(temperature=1.0, logit_bias={0: -100.0}))
    assert f[0] == 0


def test_processed_logprobs_are_log_softmax_of_processed_distribution() -> None:
    lg = logits(2.0, 1.0, 0.0)
    tok = Sampler(logprobs_mode=PROCESSED)(lg.clone(), [row(temperature=0.0, logprobs=2)])[0]
    ref = torch.log_softmax(lg[0], -1)
    assert tok.token_id == 0 and math.isclose(tok.logprob, float(ref[0]), abs_tol=1e-6)
    assert [t for t, _ in tok.top_logprobs] == [0, 1]
    assert math.isclose(tok.top_logprobs[1][1], float(ref[1]), abs_tol=1e-6)
    # With top_k truncation the processed distribution renormalises over the kept tokens.
    tok = Sampler(seed=1, logprobs_mode=PROCESSED)(lg.clone(), [row(temperature=1.0, top_k=2, logprobs=3)])[0]
    kept = torch.log_softmax(torch.tensor([2.0, 1.0]), -1)
    lp = dict(tok.top_logprobs)
    assert math.isclose(lp[0], float(kept[0]), abs_tol=1e-5) and set(lp) == {0, 1}  # dropped: not listed


def test_seeded_requests_reproduce_and_persist_across_steps() -> None:
    lg = torch.zeros(1, V)

    def draws(sampler: Sampler, rid: str, seed: int, idx: int = 0) -> list[int]:
        return [sampler(lg.clone(), [row(rid, temperature=1.0, seed=seed, idx=idx)])[0].token_id
                for _ in range(12)]

    a, b = draws(Sampler(), "a", 7), draws(Sampler(), "b", 7)
    assert a == b  # same seed, different samplers and unrelated shared generators
    assert len(set(a)) > 1  # the generator advances across steps instead of restarting
    assert draws(Sampler(), "c", 7, idx=1) != a  # n > 1: sample_index changes the stream
    s = Sampler()
    first = draws(s, "d", 7)
    s.forget(["d"])
    assert draws(s, "d", 7) == first


def test_seeded_row_in_a_batch_is_independent_of_its_neighbours() -> None:
    lg = torch.zeros(3, V)
    alone = [Sampler()(lg[:1].clone(), [row("s", temperature=1.0, seed=3)])[0].token_id]
    mixed = Sampler()(lg.clone(), [row("u1", temperature=1.0), row("s", temperature=1.0, seed=3),
                                   row("u2", temperature=0.0)])
    assert mixed[1].token_id == alone[0]
    assert mixed[2].token_id == 0  # greedy on ties picks the first


def test_row_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        Sampler()(torch.zeros(2, V), [row()])
