"""`ngram` proposer: prompt lookup over the request's own prompt and output (no extra model)."""

from __future__ import annotations

from collections.abc import Sequence

from serve.spec_decode.ngram import propose_ngram
from serve.spec_decode.proposer import ProposeInput


class NgramProposer:
    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 1) -> None:
        self.max_n = max_n
        self.min_n = min_n

    def propose(self, inputs: Sequence[ProposeInput]) -> list[list[int]]:
        return [propose_ngram(i.token_ids, i.k, self.max_n, self.min_n) for i in inputs]

    def forget(self, req_ids: Sequence[str]) -> None:
        """Stateless: nothing to drop."""

    def draft_probs(self, req_id: str) -> None:
        return None  # deterministic drafts: q is a point mass
