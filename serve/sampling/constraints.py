"""Grammar masks (structured output) in the sampler: mask first where it must, else sample first.

A full mask costs ~100 us of grammar work per row (llguidance walks its token trie); checking one
token costs ~2 us. So, as llama.cpp's common sampler does, a row is sampled without its mask, the
token checked, and the mask filled only when the grammar refuses it. That is exact:
  * greedy: the unmasked argmax, when allowed, is the masked argmax;
  * sampling with no truncation: drawing t ~ p, keeping it when allowed (A) and otherwise drawing
    from p restricted to A gives P(t) = p(t) + (1 - p(A)) * p(t) / p(A) = p(t) / p(A) for t in A,
    i.e. p conditioned on A, which is what masking first draws from. Bias, penalties and temperature
    commute with the mask (they keep -inf at -inf), so the order of those steps does not matter.
Rows that must be masked first ("eager"): truncation (top_k, top_p, min_p cut relative to the masked
distribution, so cutting first would differ), logprobs (they describe the masked distribution), and
rows verifying speculative drafts (each verify row has its own grammar state).

There used to be a thread filling masks during the forward pass. It is gone: on CPU hosts the
forward pass already keeps every core busy, so the thread competed rather than overlapped (0.90x of
unconstrained throughput on 2 cores), and with lazy checks most rows need no mask at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from serve.sampling_params import SamplingParams
from serve.structured.bitmask import apply_bitmask_torch


class Constraint(Protocol):
    """One sequence's grammar over its `num_rows` consecutive logits rows: the first row at the
    current state, row j after the first j drafts being verified."""

    num_rows: int
    vocab_size: int  # the grammar's vocabulary: a bitmask row has ceil(vocab_size / 32) int32 words

    def forced(self) -> int | None:
        """The one token the first row's mask allows, when that is known without filling it."""

    def confirms(self, token: int) -> bool:
        """True only when the first row's mask allows `token` (False: refused, or only the mask can tell)."""

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed sets of all num_rows rows into int32 bitmask rows row, row + 1, ..."""


def masks_first(params: SamplingParams, num_rows: int = 1) -> bool:
    """Whether a constrained row must be masked before processing (see the module docstring)."""
    truncates = not params.greedy and (params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0.0)
    return num_rows > 1 or truncates or params.logprobs is not None


def split(params: Sequence[SamplingParams], constraints: Mapping[int, Constraint]
          ) -> tuple[dict[int, Constraint], dict[int, Constraint]]:
    """(lazy, eager) constraints, keyed by their first logits row; params[i] is row i's."""
    lazy: dict[int, Constraint] = {}
    eager: dict[int, Constraint] = {}
    for row, c in constraints.items():
        (eager if masks_first(params[row], c.num_rows) else lazy)[row] = c
    return lazy, eager


def apply_masks(logits: torch.Tensor, constraints: Mapping[int, Constraint]) -> None:
    """In place: every row of every constraint gets its grammar mask (disallowed -> -inf).
    logits: [N, V] float32. One bitmask and one application for all the rows: each tensor op has a
    fixed cost, and under load a multi-threaded one can wait milliseconds for its threads."""
    if not constraints:
        return
    rows = [row + j for row, c in constraints.items() for j in range(c.num_rows)]
    widths = {c.vocab_size for c in constraints.values()}
    if len(widths) != 1:
        raise ValueError(f"constraints over different vocabularies in one step: {sorted(widths)}")
    bitmask = torch.full((len(rows), (widths.pop() + 31) // 32), -1, dtype=torch.int32)
    at = 0
    for c in constraints.values():
        c.fill(bitmask, at)
        at += c.num_rows
    if rows == list(range(logits.shape[0])):
        apply_bitmask_torch(logits, bitmask)
        return
    idx = torch.tensor(rows, device=logits.device)
    block = logits.index_select(0, idx)
    apply_bitmask_torch(block, bitmask)
    logits.index_copy_(0, idx, block)


def masked_rows(processed: torch.Tensor, constraints: Sequence[Constraint]) -> torch.Tensor:
    """processed: [n, V] rows of lazily checked constraints (num_rows == 1 each), in order: masked in
    place (the caller passes a copy)."""
    apply_masks(processed, dict(enumerate(constraints)))
    return processed
