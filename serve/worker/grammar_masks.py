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

from serve.structured.bitmask import apply_bitmask_torch


class GrammarMasks:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: ThreadPoolExecutor | None = None

    def start(self, fill: Callable[[Any], None], rows: int, vocab_size: int) -> Future[torch.Tensor]:
        """Allocate an all-allowed int32 bitmask [rows, ceil(vocab_size / 32)] (the grammar's vocabulary)
        and fill it on the pool."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-masks")
        bitmask = torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)

        def run() -> torch.Tensor:
            fill(bitmask)
            return bitmask

        return self._pool.submit(run)

    def apply(self, logits: torch.Tensor, masks: Future[torch.Tensor]) -> None:
        """logits [rows, V] float32, in place: disallowed tokens become -inf."""
        apply_bitmask_torch(logits, masks.result())  # tokens past the grammar's vocabulary: disallowed
