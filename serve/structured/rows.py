"""One sequence's grammar over its logits rows of one step: the sampler's Constraint
(serve/sampling/constraints.py), shared by the native and llama.cpp engines.

Row 0 is the current state; when verifying k drafts, row j is the state after the first j drafts
(accepted tentatively, then rolled back), so each verify row allows exactly what plain decoding would
at that position. A draft the grammar refuses ends the tentative walk: its row already excludes it,
so verification rejects it and later rows are never used. Drafts are checked before they are walked
(a matcher that consumed a refused token stays in error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serve.structured.matcher import GrammarMatcher


class MatcherRows:
    def __init__(self, matcher: GrammarMatcher, drafts: Sequence[int], vocab_size: int) -> None:
        self.matcher, self.drafts, self.vocab_size = matcher, list(drafts), vocab_size
        self.num_rows = 1 + len(self.drafts)

    def forced(self) -> int | None:
        return self.matcher.forced()

    def confirms(self, token: int) -> bool:
        return self.matcher.confirms(token)

    def fill(self, bitmask: Any, row: int) -> None:
        fill_rows(self.matcher, self.drafts, bitmask, row)


def fill_rows(matcher: GrammarMatcher, drafts: list[int], bitmask: Any, row0: int) -> None:
    """Fill bitmask rows row0 .. row0 + len(drafts) (int32 [rows, words], on the CPU)."""
    matcher.fill_bitmask(bitmask, row0)
    # Only the drafts the grammar allows are walked: consuming a refused one would leave the
    # matcher in an error state that a rollback does not clear.
    walked = matcher.valid_prefix(drafts)
    for j in range(walked):
        matcher.accept(drafts[j])
        matcher.fill_bitmask(bitmask, row0 + j + 1)
    if walked:
        matcher.rollback(walked)
