"""Batched logits transforms used by the sampler. Every function works on a [N, V] float32 block.

Semantics (one row = one request's next-token distribution):
  * logit_bias: logits[t] += bias[t].
  * repetition_penalty r (HF / CTRL): for every token seen in prompt or output, a positive logit is
    divided by r and a negative one multiplied by r.
  * frequency_penalty f, presence_penalty p (OpenAI): logits[t] -= f * count_out(t) + p * [count_out(t) > 0],
    counting output tokens only.
  * temperature T > 0: logits / T.
  * min_p m: drop tokens whose probability is below m * max probability.
  * top_k k: keep the k most likely tokens; top_p q: keep the smallest most-likely set whose mass
    reaches q (the token that crosses q is kept).
Dropped tokens get -inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NEG_INF = float("-inf")


def apply_logit_bias(logits: torch.Tensor, biases: Sequence[dict[int, float]]) -> None:
    """In place. biases[i] is row i's {token_id: bias}; ids outside the vocabulary are ignored."""
    vocab = logits.shape[1]
    for i, bias in enumerate(biases):
        if not bias:
            continue
        ids = [t for t in bias if t < vocab]
        if ids:
            idx = torch.tensor(ids, dtype=torch.int64, device=logits.device)
            vals = torch.tensor([bias[t] for t in ids], dtype=logits.dtype, device=logits.device)
            logits[i].index_add_(0, idx, vals)


def token_counts(histories: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[N, V] float32 counts of each token id in each row's history (ids >= vocab ignored)."""
    counts = torch.zeros(len(histories), vocab, dtype=torch.float32, device=device)
    for i, hist in enumerate(histories):
        if hist:
            ids = torch.tensor(hist, dtype=torch.int64, device=device)
            ids = ids[ids < vocab]
            counts[i].index_add_(0, ids, torch.ones(ids.shape[0], device=device))
    return counts


def apply_penalties(logits: torch.Tensor, prompt_counts: torch.Tensor, output_counts: torch.Tensor,
                    repetition: torch.Tensor, frequency: torch.Tensor, presence: torch.Tensor) -> None:
    """In place. logits, *_counts: [N, V]; repetition, frequency, presence: [N] float32."""
    seen = (prompt_counts + output_counts) > 0
    rep = repetition.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalised, logits))
    logits -= frequency.unsqueeze(1) * output_counts + presence.unsqueeze(1) * (output_counts > 0).float()


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> None:
    """In place; rows with min_p == 0 are unchanged. min_p: [N]."""
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    logits.masked_fill_(probs < threshold, NEG_INF)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> None:
    """In place. top_k: [N] int64 (0 = off); top_p: [N] float32 (1.0 = off).

    When every row limits top-k to a small k, only the k_max best are sorted (torch.topk) instead of
    the whole vocabulary.
    """
    n, vocab = logits.shape
    k_eff = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    k_max = int(k_eff.max())
    if k_max < vocab:
        vals, idx = torch.topk(logits, k_max, dim=-1)
    else:
        vals, idx = torch.sort(logits, dim=-1, descending=True)
    rank = torch.arange(vals.shape[1], device=logits.device).unsqueeze(0)
    drop = rank >= k_eff.unsqueeze(1)
    vals = vals.masked_fill(drop, NEG_INF)
    probs = torch.softmax(vals, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
    p = torch.where(top_p >= 1.0, torch.full_like(top_p, 2.0), top_p)  # 1.0 = off, despite rounding
    drop |= mass_before >= p.unsqueeze(1)
    drop[:, 0] = False  # the best token always survives
    kept = vals.masked_fill(drop, NEG_INF)
    out = torch.full_like(logits, NEG_INF)
    out.scatter_(1, idx, kept)
    logits.copy_(out)


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling. probs: [N, V] (rows need not be normalised); uniforms: [N] in [0, 1).

    Returns [N] int64. `right=True` returns the first index whose cumulative mass exceeds the target,
    which always has non-zero probability.
    """
    cdf = probs.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)
