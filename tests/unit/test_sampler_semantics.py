"""The shared sampler's semantics (serve/sampling, used by the native and llama.cpp engines): vLLM's
order (temperature, min_p, top_k, top_p renormalised after them), raw vs processed logprobs, seeds
(negative ones too), logit bias, penalties, and a caller's buffer left untouched. Cases whose answer
would change under the other order are chosen with wide margins, so no float rounding decides them."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

from serve.sampling import Sampler, SampleRow
from serve.sampling.seeds import generator_seed
from serve.sampling.transforms import draw, top_k_top_p
from serve.sampling_params import SamplingParams

PROBS = [0.4, 0.3, 0.2, 0.1]
VOCAB = 64


def row(rid: str = "r", prompt: tuple[int, ...] = (), out: tuple[int, ...] = (), idx: int = 0, **kw: Any) -> SampleRow:
    return SampleRow(rid, SamplingParams(**kw), list(prompt), list(out), idx)


def log_probs(probs: list[float], width: int | None = None) -> torch.Tensor:
    """[1, width] logits whose softmax is `probs` (padded with tokens of negligible mass)."""
    p = probs + [1e-12] * ((width or len(probs)) - len(probs))
    return torch.log(torch.tensor([p], dtype=torch.float32))


def support(lg: torch.Tensor, n: int = 600, seed: int = 7, **kw: Any) -> Counter[int]:
    """Tokens drawn in n draws (one batch of n identical rows)."""
    toks = Sampler(seed=seed)(lg.repeat(n, 1), [row(f"r{i}", **kw) for i in range(n)])
    return Counter(t.token_id for t in toks)


def rows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 3, (n, VOCAB)).astype(np.float32))


# ---- order ------------------------------------------------------------------------------------
def test_min_p_comes_before_top_p_which_renormalises() -> None:
    # min_p 0.3 drops 0.1 (< 0.12); renormalised, the others are 0.44 / 0.33 / 0.22 and top_p 0.75 keeps
    # two. top_p first (over 0.4 / 0.3 / 0.2 / 0.1) would keep three.
    assert set(support(log_probs(PROBS), temperature=1.0, min_p=0.3, top_p=0.75)) == {0, 1}


def test_top_k_comes_before_top_p_which_renormalises() -> None:
    # top_k 3 keeps 0.4 / 0.3 / 0.2 = 0.44 / 0.33 / 0.22 renormalised; top_p 0.75 then keeps two,
    # where top_p over the whole distribution would keep three.
    assert set(support(log_probs(PROBS), temperature=1.0, top_k=3, top_p=0.75)) == {0, 1}


def test_temperature_comes_before_min_p() -> None:
    # T = 2 flattens 0.5 / 0.3 / 0.2 to 0.41 / 0.32 / 0.26: min_p 0.7 keeps two (0.32 >= 0.29); before
    # temperature it would keep only the first (0.3 < 0.35).
    assert set(support(log_probs([0.5, 0.3, 0.2]), temperature=2.0, min_p=0.7)) == {0, 1}


@pytest.mark.parametrize(("kw", "kept"), [
    ({"top_p": 0.7}, {0, 1}), ({"top_p": 0.9}, {0, 1, 2}), ({"top_p": 0.35}, {0}),
    ({"min_p": 0.55}, {0, 1}), ({"min_p": 0.2}, {0, 1, 2, 3}), ({"min_p": 0.7}, {0, 1}),
    ({"top_k": 2}, {0, 1}), ({"top_k": 3}, {0, 1, 2}), ({"top_k": 1}, {0}), ({}, {0, 1, 2, 3}),
])
def test_truncation_restricts_the_support(kw: dict[str, Any], kept: set[int]) -> None:
    assert set(support(log_probs(PROBS), temperature=1.0, **kw)) == kept  # nothing outside, all inside


def test_truncated_distribution_is_renormalised() -> None:
    seen = support(log_probs(PROBS), n=2000, seed=11, temperature=1.0, top_p=0.6)
    assert abs(seen[0] / 2000 - 0.4 / 0.7) < 0.04  # {0.4, 0.3} renormalised; sd ~0.011


def test_top_k_one_and_greedy_are_the_argmax() -> None:
    lg = rows(40, seed=1)
    want = lg.argmax(dim=-1).tolist()
    assert [t.token_id for t in Sampler()(lg.clone(), [row(temperature=0.0)] * 40)] == want
    assert [t.token_id for t in Sampler()(lg.clone(), [row(f"r{i}", temperature=1.0, top_k=1)
                                                       for i in range(40)])] == want


@pytest.mark.parametrize("temperature", [9.98e-164, 1e-30, 9.9e-6])
def test_a_vanishing_temperature_is_greedy(temperature: float) -> None:
    """vLLM's rule: below 1e-5 is greedy. Dividing by 1e-164 overflows to inf and softmax to NaN,
    which once sent a draw out of range and failed the whole step (a fuzzed request found it), at
    a 49152-token vocabulary and at a small one, with and without truncation and logprobs."""
    for width in (VOCAB, 49152):
        lg = torch.from_numpy(np.random.default_rng(3).normal(0, 3, (6, width)).astype(np.float32))
        want = lg.argmax(dim=-1).tolist()
        kws: list[dict[str, Any]] = [{}, {"top_p": 0.9}, {"top_k": 5}, {"min_p": 0.1}, {"logprobs": 2}, {"seed": -105362}]
        got = Sampler()(lg.clone(), [row(f"r{i}", temperature=temperature, **kw) for i, kw in enumerate(kws)])
        assert [t.token_id for t in got] == want
    assert SamplingParams(temperature=temperature).greedy and not SamplingParams(temperature=1e-5).greedy


def test_top_p_slice_matches_a_full_sort() -> None:
    """Rows that need more than the first slices (64, 512 tokens) of a flat 5000-token distribution,
    next to top-k rows: the kept sets equal a full sort's. Each p lies midway between two cumulative
    masses, so no rounding can move the cut."""
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(4, 5000, generator=g) * 0.5
    ref = torch.sort(torch.softmax(lg.double(), -1), -1, descending=True)
    cum = ref.values.cumsum(-1)
    want = [30, 300, 2000, 5]
    top_p = [float(cum[i, m - 1] + cum[i, m]) / 2 for i, m in enumerate(want[:3])] + [1.0]
    kept = torch.isfinite(top_k_top_p(lg.clone(), [0, 0, 0, 5], top_p).scatter(5000))
    for i, m in enumerate(want):
        assert set(torch.nonzero(kept[i]).flatten().tolist()) == set(ref.indices[i, :m + 1 if i < 3 else m].tolist())


def test_temperature_sharpens() -> None:
    cold = support(log_probs(PROBS), n=500, seed=5, temperature=0.25)
    hot = support(log_probs(PROBS), n=500, seed=5, temperature=1.0)
    assert cold[0] > hot[0] + 100


# ---- logprobs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": 0.8, "seed": 1},
                                {"temperature": 0.0, "logit_bias": {5: 30.0}},
                                {"temperature": 0.7, "top_k": 3, "seed": 2, "presence_penalty": 1.0}])
def test_raw_logprobs_are_the_model_distribution(kw: dict[str, Any]) -> None:
    lg = rows(10, seed=6)
    toks = Sampler()(lg.clone(), [row(f"r{i}", out=(1, 2), logprobs=5, **kw) for i in range(10)])
    ref = torch.log_softmax(lg.double(), -1)
    for i, tok in enumerate(toks):
        assert tok.logprob == pytest.approx(float(ref[i, tok.token_id]), abs=1e-5)
        assert [t for t, _ in tok.top_logprobs] == torch.topk(ref[i], 5).indices.tolist()  # truncated ones too
        assert [v for _, v in tok.top_logprobs] == pytest.approx(torch.topk(ref[i], 5).values.tolist(), abs=1e-5)


def test_processed_logprobs_are_the_sampled_distribution() -> None:
    lg = log_probs(PROBS, VOCAB)
    tok = Sampler(seed=3, logprobs_mode="processed_logprobs")(
        lg.clone(), [row(temperature=0.5, top_k=3, logprobs=4, logit_bias={3: -1.0})])[0]
    p = torch.tensor(PROBS[:3], dtype=torch.float64) ** 2  # temperature 0.5 squares; top_k 3 cuts token 3
    ref = torch.log(p / p.sum())
    assert dict(tok.top_logprobs) == pytest.approx({0: float(ref[0]), 1: float(ref[1]), 2: float(ref[2])}, abs=1e-5)
    assert tok.logprob == pytest.approx(float(ref[tok.token_id]), abs=1e-5)


def test_logprobs_off_and_zero() -> None:
    lg = rows(1, seed=8)
    assert Sampler()(lg.clone(), [row(temperature=0.0)])[0].logprob is None
    tok = Sampler()(lg.clone(), [row(temperature=0.0, logprobs=0)])[0]
    assert tok.top_logprobs == () and tok.logprob == pytest.approx(float(torch.log_softmax(lg[0], -1)[tok.token_id]), abs=1e-5)


def test_unknown_logprobs_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="logprobs mode"):
        Sampler(logprobs_mode="raw_logits")


# ---- seeds ------------------------------------------------------------------------------------
def draws(sampler: Sampler, key: str, n: int = 30, **kw: Any) -> list[int]:
    flat = torch.zeros(1, VOCAB)  # uniform: the draw is all RNG
    return [sampler(flat.clone(), [row(key, temperature=1.0, **kw)])[0].token_id for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 42, -1, -(1 << 63), (1 << 63) - 1])
def test_any_signed_64_bit_seed_reproduces(seed: int) -> None:
    a = draws(Sampler(), "a", seed=seed)
    assert a == draws(Sampler(), "b", seed=seed)
    assert a != draws(Sampler(), "c", seed=seed, idx=1)  # the n samples differ
    assert a != draws(Sampler(), "d", seed=seed ^ 1)


def test_seeds_map_into_torch_range_and_stay_distinct() -> None:
    seeds = [-(1 << 63), -2, -1, 0, 1, (1 << 63) - 1]
    mapped = [generator_seed(s, 5, 0x5DEECE66D) for s in seeds]
    assert all(0 <= m < 1 << 64 for m in mapped) and len(set(mapped)) == len(seeds)
    assert generator_seed(-1) == (1 << 64) - 1 and generator_seed(7, 2) == 9
    assert draws(Sampler(seed_offset=1), "e", seed=7) != draws(Sampler(), "f", seed=7)  # a draft's stream


# ---- bias, penalties, buffers -----------------------------------------------------------------
def test_logit_bias_forces_and_excludes_and_ignores_ids_past_the_vocabulary() -> None:
    lg = rows(1, seed=2)
    low = int(lg.argmin())
    assert support(lg, n=200, temperature=1.0, logit_bias={low: 100.0}) == Counter({low: 200})
    assert Sampler()(lg.clone(), [row(temperature=0.0, logit_bias={low: 100.0})])[0].token_id == low
    lg4 = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    assert 0 not in support(lg4, n=300, temperature=1.0, logit_bias={0: -100.0, 10_000: 100.0})


def test_penalties_as_processed() -> None:
    s = Sampler()
    lg = torch.tensor([[2.0, -2.0, 1.0, 3.0, -1.0]])
    s.process(lg, [row(temperature=0.0, prompt=(0,), out=(1,), repetition_penalty=2.0)])
    assert lg[0].tolist() == pytest.approx([1.0, -4.0, 1.0, 3.0, -1.0])  # seen: prompt 0, output 1
    lg = torch.tensor([[2.0, 1.0, 1.0, 1.0, 1.0]])
    s.process(lg, [row(temperature=0.0, prompt=(0, 1), out=(2, 2, 4), presence_penalty=0.3, frequency_penalty=0.5)])
    assert lg[0].tolist() == pytest.approx([2.0, 1.0, 1.0 - 1.0 - 0.3, 1.0, 1.0 - 0.5 - 0.3])  # outputs only
    lg = torch.zeros(1, 3)
    s.process(lg, [row(temperature=0.0, out=(2,), presence_penalty=-1.0)])
    assert float(lg[0, 2]) == pytest.approx(1.0)


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": 0.0, "logit_bias": {3: 5.0}},
                                {"temperature": 0.9, "top_p": 0.8, "repetition_penalty": 1.5, "logprobs": 2},
                                {"temperature": 0.9, "min_p": 0.1, "top_k": 5, "presence_penalty": 1.0}])
def test_a_caller_owned_buffer_is_left_alone(kw: dict[str, Any]) -> None:
    lg = rows(3, seed=3)
    keep = lg.clone()
    Sampler(seed=0)(lg, [row(f"r{i}", prompt=(1, 2), out=(4,), **kw) for i in range(3)], scratch=False)
    assert torch.equal(lg, keep)


def test_row_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        Sampler()(torch.zeros(2, VOCAB), [row()])


def test_rows_for_one_distribution_follow_it() -> None:
    """A chi-square check at p = 0.001 that temperature sampling draws from softmax(logits / T)."""
    lg = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])
    n = 6000
    toks = Sampler(seed=4)(lg.repeat(n, 1), [row(f"r{i}", temperature=0.7) for i in range(n)])
    counts = np.bincount([t.token_id for t in toks], minlength=6)
    p = torch.softmax(lg[0].double() / 0.7, -1).numpy()
    chi2 = float(((counts - p * n) ** 2 / (p * n)).sum())
    assert chi2 < 20.52, (counts, p * n)  # 0.999 quantile of chi2 with 5 degrees of freedom
    assert math.isclose(counts.sum(), n)


@pytest.mark.parametrize("vocab", [700, 3000])  # one level; two levels with a padded last block
def test_inverse_cdf_draws_follow_the_weights_and_skip_zeros(vocab: int) -> None:
    g = torch.Generator().manual_seed(9)
    w = torch.rand(vocab, generator=g).double()
    w[torch.rand(vocab, generator=g) < 0.5] = 0.0  # half the tokens impossible
    w[-40:] = 0.0  # including the end of the row (and of its last block)
    n = 20000
    picks = draw(w.float().expand(n, vocab), torch.rand(n, generator=g))
    assert bool((w[picks] > 0).all())
    bins = 8  # chi-square over 8 bins of the vocabulary (w.chunk's)
    observed = torch.bincount(picks // -(-vocab // bins), minlength=bins).double()
    expected = torch.stack([c.sum() for c in w.chunk(bins)]) / w.sum() * n
    assert float(((observed - expected) ** 2 / expected).sum()) < 24.32  # 0.999 quantile, 7 dof
    edge = draw(w.float().unsqueeze(0), torch.tensor([1.0 - 2 ** -24]))  # the largest uniform below 1
    assert float(w[edge]) > 0


def test_each_row_of_a_mixed_batch_keeps_its_own_cut() -> None:
    """top_k rows, top_p rows of small and large nuclei, and untruncated rows in one batch: each
    row's draws stay in its own support (the truncated rows are drawn from slices of their own width)."""
    flat = torch.zeros(1, 3000)  # a top-p 0.5 nucleus of 1500 tokens: wider than the other slices
    lg = torch.cat([log_probs(PROBS, 3000), log_probs(PROBS, 3000), flat, log_probs(PROBS, 3000)])
    kinds = [{"top_k": 2}, {"top_p": 0.6}, {"top_p": 0.5}, {}]
    n = 300
    rows_ = [row(f"r{j}-{i}", temperature=1.0, **kinds[i]) for j in range(n) for i in range(4)]
    toks = Sampler(seed=3)(lg.repeat(n, 1), rows_)
    seen = [{t.token_id for t in toks[i::4]} for i in range(4)]
    assert seen[0] == {0, 1} and seen[1] == {0, 1}
    assert len(seen[2]) > 100 and max(seen[2]) < 3000
    assert {0, 1, 2, 3} <= seen[3]  # untruncated
