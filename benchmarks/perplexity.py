"""Perplexity with the standard sliding window (the method of Hugging Face's perplexity guide).

Windows of at most `context` tokens start every `stride` tokens; each window scores only the tokens
not scored by an earlier window (the last end - previous_end of it), so every token is predicted at
most once, with at least context - stride tokens of left context (a window's own first token cannot
be predicted inside it, so with stride == context the first token of each chunk is not scored). stride == context gives
disjoint chunks (faster, less context); smaller strides approach the model's full-context quality.
PPL = exp(total NLL / tokens scored).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LogitsFn = Callable[[list[int]], torch.Tensor]  # token ids [L] -> logits [L, vocab] (any float dtype)


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed to the model
    end: int  # one past the last token fed
    score_from: int  # absolute index of the first token scored in this window


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float
    tokens_scored: int
    windows: int


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need context >= 2 and 1 <= stride <= context, got context={context} stride={stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n_tokens}")
    out: list[Window] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        out.append(Window(begin, end, max(prev_end, begin + 1)))  # a window's first token has no prediction
        prev_end = end
        if end == n_tokens:
            break
    return out


def window_nll(logits: torch.Tensor, ids: Sequence[int], first_scored: int) -> tuple[float, int]:
    """logits [L, V] of the window's tokens ids [L]; scores ids[j] from logits[j - 1] for
    j >= first_scored (a window-relative index >= 1). Returns (sum NLL in nats, tokens scored)."""
    if logits.shape[0] != len(ids):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(ids)} tokens")
    if first_scored < 1:
        raise ValueError("the first token of a window has no prediction")
    targets = torch.tensor(list(ids[first_scored:]), dtype=torch.int64)
    logp = torch.log_softmax(logits[first_scored - 1:-1].float(), dim=-1)
    nll = -logp.gather(1, targets[:, None]).sum()
    return float(nll), int(targets.numel())


def perplexity(logits_fn: LogitsFn, ids: Sequence[int], context: int, stride: int,
               on_window: Callable[[int, int], None] | None = None) -> PerplexityResult:
    windows = sliding_windows(len(ids), context, stride)
    total, count = 0.0, 0
    for i, w in enumerate(windows):
        chunk = list(ids[w.begin:w.end])
        nll, n = window_nll(logits_fn(chunk), chunk, w.score_from - w.begin)
        total += nll
        count += n
        if on_window:
            on_window(i + 1, len(windows))
    return PerplexityResult(perplexity=math.exp(total / count), nll_sum=total, tokens_scored=count,
                            windows=len(windows))
