"""Token sampling over one row of logits with numpy, for backends that hand us raw logits (llama.cpp).

Order of processing matches the field (vLLM / HF): logit bias, penalties, temperature, then top-k,
top-p and min-p truncation. Logprobs are those of the model's raw distribution (vLLM's default).
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np

from serve.sampling_params import SamplingParams


class RowSampler:
    """Per-request sampling state: its RNG and the counts the penalties need."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab: int, seed_offset: int = 0) -> None:
        self.p = params
        # numpy takes only non-negative seeds; the modulo keeps negative ones (valid in the API) distinct.
        seed = None if params.seed is None else (params.seed + seed_offset) % (1 << 64)
        self.rng = np.random.default_rng(seed)
        self.prompt_set = np.unique(np.asarray(prompt_ids, dtype=np.int64)) if params.uses_penalties else None
        self.out_counts: Counter[int] = Counter()
        bias = {t: v for t, v in params.logit_bias.items() if t < vocab}
        self.bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self.bias_vals = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self.banned: list[int] = []  # e.g. EOS when ignore_eos

    def accept(self, token: int) -> None:
        self.out_counts[token] += 1

    def sample(self, raw: np.ndarray) -> tuple[int, float, list[tuple[int, float]]]:
        """raw: float32 [vocab] logits (not modified). Returns (token, raw logprob, top alternatives)."""
        logits = self._process(raw)
        token = int(np.argmax(logits)) if self.p.greedy else self._draw(logits)
        lp, top = _logprobs(raw, token, self.p.logprobs)
        return token, lp, top

    def _process(self, raw: np.ndarray) -> np.ndarray:
        p = self.p
        needs_copy = len(self.bias_ids) or p.uses_penalties or self.banned
        x = raw.astype(np.float32, copy=True) if needs_copy else raw
        if len(self.bias_ids):
            x[self.bias_ids] += self.bias_vals
        if p.uses_penalties:
            self._penalise(x)
        if self.banned:
            x[self.banned] = -np.inf
        return x

    def _penalise(self, x: np.ndarray) -> None:
        p = self.p
        if p.repetition_penalty != 1.0:
            seen = set(self.out_counts)
            if self.prompt_set is not None:
                seen.update(self.prompt_set.tolist())
            ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
            v = x[ids]
            x[ids] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if self.out_counts and (p.presence_penalty or p.frequency_penalty):
            ids = np.fromiter(self.out_counts.keys(), dtype=np.int64, count=len(self.out_counts))
            counts = np.fromiter(self.out_counts.values(), dtype=np.float32, count=len(self.out_counts))
            x[ids] -= p.frequency_penalty * counts + p.presence_penalty

    def sample_against(self, raw: np.ndarray, draft: int) -> tuple[int, float, list[tuple[int, float]]]:
        """Verify one drafted token against this row (speculative decoding); same return as `sample`.

        Greedy: the argmax, so the draft is accepted exactly when it is the argmax. Sampling: the
        draft (a point mass, the proposer has no distribution) is accepted with probability p(draft),
        else a token is drawn from p with the draft's mass removed; the result is distributed as p.
        """
        if self.p.greedy:
            return self.sample(raw)
        ids, probs = self._distribution(self._process(raw))
        token = verify_point_draft(ids, probs, draft, self.rng)
        lp, top = _logprobs(raw, token, self.p.logprobs)
        return token, lp, top

    def _draw(self, logits: np.ndarray) -> int:
        ids, probs = self._distribution(logits)
        return int(ids[_inverse_cdf(probs, self.rng.random())])

    def _distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Processed logits -> (token ids [K], their probabilities [K], sum 1) after top-k, top-p, min-p.

        Only the candidates a truncation can keep are sorted: a full argsort of a 49k vocabulary per
        token cost ~5 ms here, more than llama.cpp's whole decode step for a 135M model.
        """
        p = self.p
        x = logits.astype(np.float32, copy=False) / np.float32(p.temperature)
        if 0 < p.top_k < x.shape[0]:
            idx = np.argpartition(-x, p.top_k - 1)[: p.top_k]
            order = idx[np.argsort(-x[idx], kind="stable")]
            return _truncate(order, _softmax(x[order]), p.top_p, p.min_p)
        if p.top_p < 1.0:
            return _nucleus(x, p.top_p, p.min_p)
        if p.min_p > 0.0:  # keep what reaches min_p of the top probability: a threshold on the logits
            keep = np.flatnonzero(x >= x.max() + np.float32(np.log(p.min_p)))
            return keep, _softmax(x[keep])
        return _all_ids(x.shape[0]), _softmax_(x)  # unsorted: no truncation needs an order


def _nucleus(x: np.ndarray, top_p: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """top-p over the whole vocabulary, sorting only as many top logits as the nucleus needs."""
    m = float(x.max())
    lse = m + float(np.log(np.sum(np.exp(x - m), dtype=np.float64)))
    n = min(64, x.shape[0])
    while True:
        idx = np.argpartition(-x, n - 1)[:n] if n < x.shape[0] else np.arange(x.shape[0])
        order = idx[np.argsort(-x[idx], kind="stable")]
        probs = np.exp(x[order].astype(np.float64) - lse)
        if probs.sum() >= top_p or n == x.shape[0]:
            return _truncate(order, probs, top_p, min_p)
        n = min(n * 8, x.shape[0])


def _truncate(order: np.ndarray, probs: np.ndarray, top_p: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """order: ids by falling probability; probs: theirs (of the whole distribution before the cut)."""
    keep = len(order)
    if top_p < 1.0:
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), top_p, side="left")) + 1)
    if min_p > 0.0:
        keep = min(keep, max(1, int(np.sum(probs >= min_p * probs[0]))))
    kept = probs[:keep]
    return order[:keep], kept / kept.sum()


_BLOCK = 256


def _inverse_cdf(weights: np.ndarray, u: float) -> int:
    """The index where u (in [0, 1)) falls in the cumulative weights (any positive scale).

    In two levels, block sums then one block, because numpy's cumsum over a whole vocabulary is a
    scalar loop (~0.2 ms for 49k entries) while the block sums vectorise."""
    n = len(weights)
    if n <= 4 * _BLOCK:
        cum = np.cumsum(weights, dtype=np.float64)
        return min(int(np.searchsorted(cum, u * cum[-1], side="right")), n - 1)
    full = n - n % _BLOCK
    sums = weights[:full].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    if full < n:
        sums = np.append(sums, weights[full:].sum(dtype=np.float64))
    cum = np.cumsum(sums)
    target = u * cum[-1]
    b = min(int(np.searchsorted(cum, target, side="right")), len(sums) - 1)
    lo = b * _BLOCK
    inner = np.cumsum(weights[lo:lo + _BLOCK], dtype=np.float64)
    rest = target - (cum[b - 1] if b else 0.0)
    return min(lo + int(np.searchsorted(inner, rest, side="right")), n - 1)


def verify_point_draft(ids: np.ndarray, probs: np.ndarray, draft: int, rng: np.random.Generator) -> int:
    """Rejection sampling with a deterministic draft: the returned token is distributed exactly as probs.

    With q = point mass on `draft`, min(1, p/q) = p(draft) and the residual max(p - q, 0) is p without
    the draft's mass: P(draft) = p(d); P(t != d) = (1 - p(d)) * p(t) / (1 - p(d)) = p(t).
    ids: [K] token ids; probs: [K] float, sum 1. A draft outside ids has p = 0 and is always rejected.
    """
    hit = np.flatnonzero(ids == draft)
    p_draft = float(probs[hit[0]]) if hit.size else 0.0
    if rng.random() < p_draft:
        return draft
    residual = probs.astype(np.float64, copy=True)
    if hit.size:
        residual[hit[0]] = 0.0
    total = residual.sum()
    if total <= 0.0:  # p(draft) == 1 up to rounding: nothing else can be drawn
        return draft
    return int(ids[_inverse_cdf(residual, rng.random())])


@functools.cache
def _all_ids(n: int) -> np.ndarray:
    ids = np.arange(n)
    ids.flags.writeable = False
    return ids


def _softmax_(x: np.ndarray) -> np.ndarray:
    """Softmax in place (x is a scratch array)."""
    x -= x.max()
    np.exp(x, out=x)
    x *= 1.0 / x.sum(dtype=np.float64)
    return x


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def _logprobs(raw: np.ndarray, token: int, k: int | None) -> tuple[float, list[tuple[int, float]]]:
    if k is None:
        return 0.0, []
    m = float(np.max(raw))
    lse = m + float(np.log(np.sum(np.exp(raw - m))))
    top: list[tuple[int, float]] = []
    if k > 0:
        idx = np.argpartition(-raw, k - 1)[:k]
        idx = idx[np.argsort(-raw[idx], kind="stable")]
        top = [(int(i), float(raw[i]) - lse) for i in idx]
    return float(raw[token]) - lse, top
