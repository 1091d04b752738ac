"""Speculative decoding counters (pure Python), named like vLLM's `spec_decode` metrics family.

Cumulative since start: `num_drafts` (verification steps of one request with >= 1 draft token),
`num_draft_tokens`, `num_accepted_tokens`, and `accepted_per_pos[j]` (how often draft j was accepted;
divide by num_drafts for the acceptance rate per position).
"""

from __future__ import annotations

# Key prefix of the per-position counters in `as_stats()`; serve/api/metrics.py turns the suffix into
# the `position` label of sluice:spec_decode_num_accepted_tokens_per_pos_total.
PER_POS_PREFIX = "spec_decode_num_accepted_tokens_per_pos."


class SpecDecodeStats:
    def __init__(self) -> None:
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_pos: list[int] = []
        # req_id -> (drafted, accepted) of its verification in the last step (read by adaptive k).
        self.last_step: dict[str, tuple[int, int]] = {}

    def observe(self, req_id: str, num_drafts: int, num_accepted: int) -> None:
        if num_drafts <= 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_pos) < num_drafts:
            self.accepted_per_pos.extend([0] * (num_drafts - len(self.accepted_per_pos)))
        for j in range(num_accepted):
            self.accepted_per_pos[j] += 1
        self.last_step[req_id] = (num_drafts, num_accepted)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    def as_stats(self) -> dict[str, int]:
        out = {"spec_decode_num_drafts": self.num_drafts, "spec_decode_num_draft_tokens": self.num_draft_tokens,
               "spec_decode_num_accepted_tokens": self.num_accepted_tokens}
        for j, n in enumerate(self.accepted_per_pos):
            out[f"{PER_POS_PREFIX}{j}"] = n
        return out
