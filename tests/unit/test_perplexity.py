"""Sliding-window perplexity on cases whose answer is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.perplexity import perplexity, sliding_windows, window_nll


def test_uniform_logits_give_vocab_size() -> None:
    vocab = 37
    res = perplexity(lambda ids: torch.zeros(len(ids), vocab), list(range(30)) * 5, context=16, stride=8)
    assert res.perplexity == pytest.approx(vocab, rel=1e-6)


def test_a_model_that_knows_the_next_token_scores_one() -> None:
    vocab = 11
    seq = [(3 * i + 1) % vocab for i in range(200)]

    def oracle(ids: list[int]) -> torch.Tensor:
        out = torch.full((len(ids), vocab), -1e4)
        for j, t in enumerate(ids):
            out[j, (t + 3) % vocab] = 0.0  # x_{i+1} = x_i + 3 (mod 11)
        return out

    assert perplexity(oracle, seq, context=32, stride=16).perplexity == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n,context,stride", [(100, 16, 8), (100, 16, 16), (17, 16, 4), (5, 16, 8), (64, 8, 1)])
def test_every_token_scored_at_most_once(n: int, context: int, stride: int) -> None:
    scored: list[int] = []
    for w in sliding_windows(n, context, stride):
        assert w.end - w.begin <= context and w.begin < w.score_from <= w.end
        scored.extend(range(w.score_from, w.end))
    assert len(scored) == len(set(scored)) and 0 not in scored
    if stride < context:  # overlapping windows score every token after the first
        assert sorted(scored) == list(range(1, n))


def test_known_nll_of_one_window() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    nll, n = window_nll(logits, [0, 1, 0], first_scored=1)
    assert n == 2 and nll == pytest.approx(-math.log(0.5) - math.log(0.25))


def test_context_changes_the_answer_for_a_context_sensitive_model() -> None:
    """A model that is right only with >= 4 tokens of left context: longer overlap, lower perplexity."""
    vocab = 7
    seq = [i % vocab for i in range(120)]

    def needs_context(ids: list[int]) -> torch.Tensor:
        out = torch.zeros(len(ids), vocab)
        for j in range(3, len(ids)):
            out[j, (ids[j] + 1) % vocab] = 20.0
        return out

    short = perplexity(needs_context, seq, context=8, stride=8).perplexity
    long = perplexity(needs_context, seq, context=8, stride=2).perplexity
    assert long < short


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 8, 9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_windows(1, 8, 4)
