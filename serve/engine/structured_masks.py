"""Structured output in the engine: which logits rows of a step are constrained, and by what.

The engine owns each request's grammar matcher (control plane: no tensors here); the runner's
sampler fills and applies bitmasks (serve/sampling/constraints.py decides which rows are masked
before sampling and which are sampled first and checked). A step's `grammars` maps the first logits
row of each constrained sequence to a MatcherRows over its rows (1, or 1 + k when verifying k drafts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from serve.engine.batch import ScheduledSeq
from serve.engine.request import Request
from serve.structured.rows import MatcherRows


def step_grammars(seqs: Sequence[ScheduledSeq], requests: Mapping[str, Request],
                  vocab_size: Callable[[], int]) -> dict[int, MatcherRows] | None:
    """`vocab_size`: the grammar vocabulary's size (the bitmask width), asked only when needed."""
    out: dict[int, MatcherRows] = {}
    row = 0
    width = 0
    for s in seqs:
        req = requests.get(s.req_id)
        if req is not None and req.matcher is not None and s.num_logits:
            drafts = s.token_ids[len(s.token_ids) - s.num_logits + 1:] if s.num_logits > 1 else []
            width = width or vocab_size()
            out[row] = MatcherRows(req.matcher, drafts, width)
        row += s.num_logits
    return out or None
