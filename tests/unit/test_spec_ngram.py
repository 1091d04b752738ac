"""Prompt-lookup proposal: against a brute-force reference, edge cases, and speed."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from serve.spec_decode.ngram import propose_ngram


def _reference(tokens: list[int], k: int, max_n: int, min_n: int) -> list[int]:
    """The definition, written as plainly as possible (quadratic)."""
    n_tokens = len(tokens)
    for n in range(max_n, min_n - 1, -1):
        if n >= n_tokens:
            continue
        suffix = tokens[n_tokens - n :]
        # Start positions i < L - n: the occurrence is earlier than the suffix itself.
        for i in range(n_tokens - n - 1, -1, -1):
            if tokens[i : i + n] == suffix:
                return tokens[i + n : i + n + k]
    return []


def test_copies_continuation_of_most_recent_match() -> None:
    toks = [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    # Longest match of the suffix [1,2,3] (n=3): most recent earlier one ends at index 7 -> [5, 7, 1].
    assert propose_ngram(toks, k=3, max_n=3) == [5, 7, 1]


def test_longer_match_beats_more_recent_shorter_one() -> None:
    toks = [7, 8, 9, 10, 11, 0, 9, 12, 7, 8, 9]
    # [7,8,9] occurs at 0..2 (n=3); the more recent [9] at 6 only matches n=1.
    assert propose_ngram(toks, k=2, max_n=3) == [10, 11]
    assert propose_ngram(toks, k=2, max_n=1) == [12, 7]


def test_no_match_and_limits() -> None:
    assert propose_ngram([1, 2, 3, 4], k=4) == []
    assert propose_ngram([], k=4) == []
    assert propose_ngram([5], k=4) == []
    assert propose_ngram([5, 5], k=4) == [5]
    assert propose_ngram([1, 2, 1, 2], k=0) == []
    # min_n above the best match length -> nothing.
    assert propose_ngram([1, 2, 3, 9, 3], k=2, max_n=4, min_n=2) == []
    # Truncated at the end of the sequence.
    assert propose_ngram([4, 5, 6, 4], k=10) == [5, 6, 4]


@pytest.mark.parametrize(("k", "max_n", "min_n"), [(-1, 4, 1), (2, 4, 0), (2, 1, 2)])
def test_bad_arguments_raise(k: int, max_n: int, min_n: int) -> None:
    with pytest.raises(ValueError):
        propose_ngram([1, 2, 1], k=k, max_n=max_n, min_n=min_n)


def test_matches_reference_on_random_sequences() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        vocab = rng.choice([2, 3, 5, 50])
        toks = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        min_n = rng.randint(1, 3)
        max_n = rng.randint(min_n, 5)
        k = rng.randint(0, 6)
        want = _reference(toks, k, max_n, min_n)
        assert propose_ngram(toks, k, max_n, min_n) == want, (toks, k, max_n, min_n)
        assert propose_ngram(np.asarray(toks, dtype=np.int32), k, max_n, min_n) == want


def test_fast_on_long_context() -> None:
    """4k tokens of a 30-token vocabulary (many candidates): well under 1 ms per call."""
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 30, size=4096).astype(np.int32)
    propose_ngram(toks, 4)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20):
            propose_ngram(toks, 4)
        best = min(best, (time.perf_counter() - t0) / 20)
    # Typical ~30 us here; the bound leaves room for a busy shared machine.
    assert best < 1e-3, best
