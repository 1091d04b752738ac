"""Logprobs of sampled tokens: the chosen token's and the top alternatives', best first.

Which distribution they describe is the sampler's `logprobs_mode` (vLLM's flag and names):
  * "raw_logprobs" (default): the model's own distribution, log-softmax of its logits after the
    grammar mask (structured output) and before logit_bias, penalties, temperature and truncation;
  * "processed_logprobs": the distribution the token was drawn from (greedy rows: after bias and
    penalties; sampled rows: after temperature, min_p, top_k and top_p too).
Tokens at -inf (masked or truncated) never appear among the alternatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serve.engine.batch import SampledToken
from serve.sampling_params import LOGPROBS_MODES

RAW, PROCESSED = LOGPROBS_MODES


def check_mode(mode: str) -> str:
    if mode not in LOGPROBS_MODES:
        raise ValueError(f"unknown logprobs mode {mode!r}; choose one of: {', '.join(LOGPROBS_MODES)}")
    return mode


def tokens_with_logprobs(logp: torch.Tensor, ks: Sequence[int], chosen: Sequence[int]) -> list[SampledToken]:
    """logp: [n, V] log-probabilities; ks[j]: how many alternatives row j wants; chosen[j]: its token."""
    k_max = max(ks, default=0)
    top_v, top_i = torch.topk(logp, k_max, dim=-1) if k_max else (None, None)
    picked = logp.gather(1, torch.tensor([[t] for t in chosen], device=logp.device)).squeeze(1).tolist()
    out = []
    for j, (k, t) in enumerate(zip(ks, chosen, strict=True)):
        top: tuple[tuple[int, float], ...] = ()
        if k:
            top = tuple((a, v) for a, v in zip(top_i[j, :k].tolist(), top_v[j, :k].tolist(), strict=True)
                        if v != float("-inf"))
        out.append(SampledToken(t, float(picked[j]), top))
    return out
