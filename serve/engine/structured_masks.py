"""Structured output in the engine: which bitmask rows a step needs, and how to fill them.

The engine owns each request's grammar matcher (control plane: no tensors here); the runner owns the
bitmask. A step's `fill_masks` closes over the matchers of its constrained sequences and fills their
rows: row 0 from the current state and, when verifying k drafts, row j from the state after the
first j drafts (accepted tentatively, then rolled back), so each verify row allows exactly what plain
decoding would at that position. A draft the grammar refuses ends the tentative walk: its row already
excludes it, so verification rejects it and later rows are never used. Drafts are checked before they
are walked (a matcher that consumed a refused token stays in error).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serve.engine.batch import ScheduledSeq
from serve.engine.request import Request

_Plan = list[tuple[int, Any, list[int]]]  # (first logits row, matcher, drafts to walk)


class MaskFiller:
    """`fill_masks` of a StepBatch: call it with an int32 bitmask [rows, ceil(vocab_size / 32)]."""

    def __init__(self, plan: _Plan, vocab_size: int) -> None:
        self.plan, self.vocab_size = plan, vocab_size

    def __call__(self, bitmask: Any) -> None:
        _fill(self.plan, bitmask)


def mask_filler(seqs: Sequence[ScheduledSeq], requests: Mapping[str, Request],
                vocab_size: Callable[[], int] | None = None) -> MaskFiller | None:
    """`vocab_size`: the grammar vocabulary's size (the bitmask width), asked only when needed."""
    plan: _Plan = []
    row = 0
    for s in seqs:
        req = requests.get(s.req_id)
        if req is not None and req.matcher is not None and s.num_logits:
            drafts = s.token_ids[len(s.token_ids) - s.num_logits + 1:] if s.num_logits > 1 else []
            plan.append((row, req.matcher, list(drafts)))
        row += s.num_logits
    if not plan:
        return None
    return MaskFiller(plan, vocab_size() if vocab_size is not None else 0)


def _fill(plan: _Plan, bitmask: Any) -> None:
    for row0, matcher, drafts in plan:
        matcher.fill_bitmask(bitmask, row0)
        # Only the drafts the grammar allows are walked: consuming a refused one would leave the
        # matcher in an error state that a rollback does not clear.
        walked = matcher.valid_prefix(drafts)
        for j in range(walked):
            matcher.accept(drafts[j])
            matcher.fill_bitmask(bitmask, row0 + j + 1)
        if walked:
            matcher.rollback(walked)
