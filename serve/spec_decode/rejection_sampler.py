"""The native engine's verification of sampled speculating sequences: the shared sampler's `verify`
(serve/sampling), given each sequence's drafts and, from a draft model, the q they were drawn from.
The rule itself, exact for any draft distribution, is serve/sampling/rejection.py.

Greedy requests never come here: the runner's argmax per row, compared with the drafts by the
scheduler, is exact argmax matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from serve.engine.batch import SampledToken, ScheduledSeq
from serve.sampling import DraftGroup, Sampler, SampleRow
from serve.sampling.constraints import Constraint
from serve.spec_decode.proposer import DraftProbs


class RejectionSampler:
    def __init__(self, sampler: Sampler, draft_probs: DraftProbs | None = None) -> None:
        self.sampler = sampler
        self.draft_probs = draft_probs  # set by the engine when a draft model proposes

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow], seqs: Sequence[ScheduledSeq],
                 constraints: Mapping[int, Constraint] | None = None) -> dict[str, list[SampledToken]]:
        """logits: [sum(num_logits), V] float32, the rows of `seqs` in order (modified in place);
        constraints: grammars by each sequence's first row among these."""
        groups = []
        for s in seqs:
            k = s.num_logits - 1
            q = self.draft_probs.draft_probs(s.req_id) if self.draft_probs is not None else None
            groups.append(DraftGroup(s.token_ids[-k:], q))
        tokens = self.sampler.verify(logits, rows, groups, constraints)
        return {s.req_id: t for s, t in zip(seqs, tokens, strict=True)}
