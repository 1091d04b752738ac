"""Structured-output bitmasks in the data plane: filled on a thread while the forward pass runs,
applied to the logits rows before sampling (so greedy, sampling and rejection sampling all see only
the tokens the grammar allows).

The matchers' work (llguidance) releases the GIL, so filling overlaps the model's forward pass; the
engine thread joins before sampling and touches the matchers again only after this step returns.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class GrammarMasks:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: ThreadPoolExecutor | None = None

    def start(self, fill: Callable[[Any], None], rows: int, vocab_size: int) -> Future[torch.Tensor]:
        """Allocate an all-allowed int32 bitmask [rows, ceil(vocab / 32)] and fill it on the pool."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-masks")
        bitmask = torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)

        def run() -> torch.Tensor:
            fill(bitmask)
            return bitmask

        return self._pool.submit(run)

    def apply(self, logits: torch.Tensor, masks: Future[torch.Tensor]) -> None:
        """logits [rows, V] float32, in place: disallowed tokens become -inf."""
        bitmask = masks.result()
        apply_bitmask_(logits, bitmask.to(logits.device))


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Bit j of word w in a row allows token 32 * w + j (llguidance's layout)."""
    vocab = logits.shape[-1]
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().view(bitmask.shape[0], -1)[:, :vocab]
    logits.masked_fill_(~allowed, float("-inf"))
