"""Prompt-lookup (n-gram) draft proposal: no extra model.

If the last n tokens of a request (prompt + output so far) occurred earlier in the same sequence, the
tokens that followed that earlier occurrence are a cheap guess of what comes next. Input-grounded
tasks (edit, summarise, quote a given text) copy long runs from the prompt, so the guess is often
right and the target model verifies several tokens in one forward.

The search is vectorised with numpy: one comparison over the whole sequence finds the candidate
end positions (earlier tokens equal to the last token), then a few comparisons over the candidates
only measure how far back each match extends. For 4k tokens this is tens of microseconds; a numpy
int array input avoids the list -> array conversion, which dominates for Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _validate(k: int, max_n: int, min_n: int) -> None:
    if k < 0:
        raise ValueError(f"number of speculative tokens k must be >= 0, got {k}")
    if min_n < 1:
        raise ValueError(f"prompt_lookup_min must be >= 1, got {min_n}")
    if max_n < min_n:
        raise ValueError(f"prompt_lookup_max ({max_n}) must be >= prompt_lookup_min ({min_n})")


def _match_lengths(arr: np.ndarray, ends: np.ndarray, max_n: int) -> np.ndarray:
    """How many tokens (up to max_n) the sequence ending at each of `ends` shares with the suffix.

    arr: [L] int tokens; ends: [C] int positions < L-1 with arr[end] == arr[L-1].
    Returns [C] int64 lengths in [1, max_n]; a match may not start before position 0.
    """
    n_tokens = arr.shape[0]
    lengths = np.ones(ends.shape[0], dtype=np.int64)
    alive = np.ones(ends.shape[0], dtype=bool)
    for j in range(1, max_n):
        if n_tokens - 1 - j < 0:
            break
        back = ends - j
        ok = alive & (back >= 0)
        # Clip so the gather is valid; `ok` already masks the out-of-range ones.
        ok &= arr[np.maximum(back, 0)] == arr[n_tokens - 1 - j]
        lengths += ok
        alive = ok
        if not alive.any():
            break
    return lengths


def propose_ngram(tokens: Sequence[int] | np.ndarray, k: int, max_n: int = 4, min_n: int = 1) -> list[int]:
    """Propose up to k draft tokens by prompt lookup.

    For n from max_n down to min_n, find the most recent earlier occurrence of the last n tokens of
    `tokens` (the suffix itself excluded) and return up to k tokens that followed it. Longer matches
    win over more recent shorter ones. Returns [] when nothing matches or k == 0.

    tokens: [L] ints (a 1-D numpy int array is used without copying).
    """
    _validate(k, max_n, min_n)
    arr = np.asarray(tokens)
    n_tokens = int(arr.shape[0])
    if k == 0 or n_tokens < min_n + 1:
        return []
    # Candidate end positions of an earlier match: equal to the last token, at least one token after.
    ends = np.flatnonzero(arr[: n_tokens - 1] == arr[n_tokens - 1])
    if ends.shape[0] == 0:
        return []
    lengths = _match_lengths(arr, ends, max_n)
    best = int(lengths.max())
    if best < min_n:
        return []
    # Most recent end among the longest matches (ends are ascending).
    end = int(ends[np.flatnonzero(lengths == best)[-1]])
    return [int(t) for t in arr[end + 1 : end + 1 + k]]
