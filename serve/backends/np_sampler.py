"""Token sampling over one row of logits with numpy, for backends that hand us raw logits (llama.cpp).

Order of processing matches the field (vLLM / HF): logit bias, penalties, temperature, then top-k,
top-p and min-p truncation. Logprobs are those of the model's raw distribution (vLLM's default).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from serve.sampling_params import SamplingParams


class RowSampler:
    """Per-request sampling state: its RNG and the counts the penalties need."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab: int, seed_offset: int = 0) -> None:
        self.p = params
        seed = None if params.seed is None else params.seed + seed_offset
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
        order, probs = self._distribution(logits)
        return int(order[self.rng.choice(len(order), p=probs)])

    def _distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Processed logits -> (token ids [K] by falling probability, their probabilities [K], sum 1)."""
        p = self.p
        x = logits / p.temperature
        k = p.top_k if p.top_k > 0 else x.shape[0]
        idx = np.argpartition(-x, k - 1)[:k] if k < x.shape[0] else np.arange(x.shape[0])
        order = idx[np.argsort(-x[idx], kind="stable")]
        probs = _softmax(x[order])
        keep = len(order)
        if p.top_p < 1.0:
            cum = np.cumsum(probs)
            keep = min(keep, int(np.searchsorted(cum, p.top_p, side="left")) + 1)
        if p.min_p > 0.0:
            keep = min(keep, max(1, int(np.sum(probs >= p.min_p * probs[0]))))
        return order[:keep], probs[:keep] / probs[:keep].sum()


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
    return int(ids[rng.choice(len(ids), p=residual / total)])


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
