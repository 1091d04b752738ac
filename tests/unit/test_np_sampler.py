"""RowSampler (numpy): greedy, seeds, logit bias, penalties, truncation (top-k/p, min-p), logprobs."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from serve.backends.np_sampler import RowSampler
from serve.sampling_params import SamplingParams

VOCAB = 64


def rows(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 3, VOCAB).astype(np.float32) for _ in range(n)]


def sampler(prompt: list[int] | None = None, vocab: int = VOCAB, seed_offset: int = 0, **kw: Any) -> RowSampler:
    return RowSampler(SamplingParams(**kw), prompt or [], vocab, seed_offset)


def draws(s: RowSampler, raw: np.ndarray, n: int) -> Counter[int]:
    return Counter(s.sample(raw)[0] for _ in range(n))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 - (x64.max() + np.log(np.exp(x64 - x64.max()).sum()))


def test_greedy_is_argmax() -> None:
    s = sampler(temperature=0.0)
    for raw in rows(50):
        assert s.sample(raw)[0] == int(np.argmax(raw))


def test_top_k_one_equals_greedy() -> None:
    s = sampler(temperature=1.0, top_k=1)
    for raw in rows(50, seed=1):
        assert s.sample(raw)[0] == int(np.argmax(raw))


def test_same_seed_same_sequence_different_seeds_differ() -> None:
    flat = np.zeros(VOCAB, dtype=np.float32)  # uniform: the draw is all RNG
    a = sampler(seed=42)
    b = sampler(seed=42)
    c = sampler(seed=43)
    d = sampler(seed=42, seed_offset=1)  # the second of n samples must not repeat the first
    sa, sb, sc, sd = ([x.sample(flat)[0] for _ in range(40)] for x in (a, b, c, d))
    assert sa == sb
    assert sa != sc and sa != sd


def test_logit_bias_plus_100_forces_a_token() -> None:
    raw = rows(1, seed=2)[0]
    low = int(np.argmin(raw))
    assert draws(sampler(logit_bias={low: 100.0}, seed=0), raw, 200) == Counter({low: 200})
    assert sampler(temperature=0.0, logit_bias={low: 100.0}).sample(raw)[0] == low


def test_logit_bias_minus_100_excludes_a_token_and_out_of_vocab_ids_are_ignored() -> None:
    raw = np.array([5.0, 0.0, 0.0, 0.0], dtype=np.float32)
    s = sampler(vocab=4, logit_bias={0: -100.0, 10_000: 100.0}, seed=3)
    assert 0 not in draws(s, raw, 300)


def test_raw_logits_are_not_modified() -> None:
    raw = rows(1, seed=3)[0]
    keep = raw.copy()
    s = sampler([1, 2], logit_bias={3: 5.0}, repetition_penalty=1.5, presence_penalty=1.0, seed=0)
    s.accept(4)
    s.sample(raw)
    assert np.array_equal(raw, keep)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    raw = np.array([2.0, -2.0, 1.0, 3.0, -1.0], dtype=np.float32)
    s = sampler([0], vocab=5, repetition_penalty=2.0)
    s.accept(1)  # seen = prompt {0} + output {1}
    x = s._process(raw)
    np.testing.assert_allclose(x, [1.0, -4.0, 1.0, 3.0, -1.0])


def test_presence_and_frequency_penalties_use_output_counts_only() -> None:
    raw = np.array([2.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    s = sampler([0, 1], vocab=5, presence_penalty=0.3, frequency_penalty=0.5)
    for t in (2, 2, 4):
        s.accept(t)
    x = s._process(raw)
    # logit -= frequency * count + presence * (count > 0); prompt tokens 0 and 1 are untouched.
    np.testing.assert_allclose(x, [2.0, 1.0, 1.0 - 1.0 - 0.3, 1.0, 1.0 - 0.5 - 0.3], rtol=1e-6)


def test_negative_penalties_raise_seen_logits() -> None:
    raw = np.zeros(3, dtype=np.float32)
    s = sampler(vocab=3, presence_penalty=-1.0)
    s.accept(2)
    assert s._process(raw)[2] == pytest.approx(1.0)


def test_banned_token_is_never_chosen() -> None:
    raw = rows(1, seed=4)[0]
    s = sampler(temperature=0.0)
    s.banned.append(int(np.argmax(raw)))  # e.g. EOS under ignore_eos
    assert s.sample(raw)[0] == int(np.argsort(-raw)[1])


PROBS = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))


@pytest.mark.parametrize(("kw", "support"), [
    ({"top_p": 0.7}, {0, 1}),
    ({"top_p": 0.9}, {0, 1, 2}),
    ({"top_p": 0.4}, {0}),
    ({"min_p": 0.5}, {0, 1}),  # keeps p >= 0.5 * 0.5
    ({"min_p": 0.2}, {0, 1, 2}),
    ({"top_k": 2}, {0, 1}),
    ({"top_k": 3}, {0, 1, 2}),
    ({"top_k": 3, "top_p": 0.7}, {0, 1}),
    ({}, {0, 1, 2, 3}),
])
def test_truncation_restricts_the_support(kw: dict[str, Any], support: set[int]) -> None:
    seen = draws(sampler(vocab=4, seed=7, **kw), PROBS, 600)
    assert set(seen) == support  # nothing outside, and everything inside shows up


def test_truncated_distribution_is_renormalised() -> None:
    seen = draws(sampler(vocab=4, seed=11, top_p=0.7), PROBS, 1000)
    # {0: 0.5, 1: 0.3} renormalised: P(0) = 0.625; sd over 1000 draws ~0.015.
    assert abs(seen[0] / 1000 - 0.625) < 0.05


def test_temperature_sharpens() -> None:
    cold = draws(sampler(vocab=4, seed=5, temperature=0.25), PROBS, 500)
    hot = draws(sampler(vocab=4, seed=5, temperature=1.0), PROBS, 500)
    assert cold[0] > hot[0] + 100


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 0.8, "seed": 1},
                                    {"temperature": 0.0, "logit_bias": {5: 30.0}}])
def test_logprobs_are_log_softmax_of_raw_logits_with_sorted_top(params: dict[str, Any]) -> None:
    s = sampler(logprobs=5, **params)
    for raw in rows(10, seed=6):
        token, lp, top = s.sample(raw)
        ref = log_softmax(raw)
        assert lp == pytest.approx(ref[token], abs=1e-5)
        assert [t for t, _ in top] == list(np.argsort(-ref)[:5])
        assert [v for _, v in top] == pytest.approx(sorted(ref, reverse=True)[:5], abs=1e-5)
        assert all(a[1] >= b[1] for a, b in zip(top, top[1:], strict=False))


def test_logprobs_off_and_zero() -> None:
    raw = rows(1, seed=8)[0]
    assert sampler(temperature=0.0).sample(raw)[1:] == (0.0, [])
    token, lp, top = sampler(temperature=0.0, logprobs=0).sample(raw)
    assert top == [] and lp == pytest.approx(log_softmax(raw)[token], abs=1e-5)
