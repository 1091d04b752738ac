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

    def _draw(self, logits: np.ndarray) -> int:
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
        probs = probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(keep, p=probs)])


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
