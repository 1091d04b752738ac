"""The Proposer protocol: who guesses the next k tokens of a running request, between engine steps.

The engine calls `propose` once per step, after the scheduler applied the step's samples, for the
running requests in decode that may speculate. A proposer returns up to `k` token ids per request;
the engine stores them in `Request.spec_token_ids` and the next step verifies them in the same
forward as every other request's tokens. Proposers that draw their drafts from a distribution q
(a draft model at temperature > 0) keep q for the runner's rejection sampler (`DraftProbs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from serve.sampling_params import SamplingParams


@dataclass(frozen=True)
class ProposeInput:
    """One request to draft for (read-only views of the scheduler's request)."""

    req_id: str
    token_ids: Sequence[int]  # prompt + verified outputs; the last one is not in the KV cache yet
    num_prompt_tokens: int
    k: int  # drafts wanted (>= 1)
    params: SamplingParams
    block_table: Sequence[int]  # the target's blocks (a draft model with the same geometry reuses them)
    sample_index: int = 0
    epoch: int = 0  # bumps when the request was preempted: its KV (target and draft) is gone

    @property
    def output_token_ids(self) -> Sequence[int]:
        return self.token_ids[self.num_prompt_tokens:]


class Proposer(Protocol):
    name: str

    def propose(self, inputs: Sequence[ProposeInput]) -> list[list[int]]:
        """Draft tokens per input, in order: at most `k` each, possibly none."""
        ...

    def forget(self, req_ids: Sequence[str]) -> None:
        """Drop per-request state of finished or aborted requests."""
        ...


class DraftProbs(Protocol):
    """What the runner's rejection sampler reads: q of the drafts it verifies."""

    def draft_probs(self, req_id: str) -> Any:
        """[k, V] float32 probabilities the drafts were sampled from, or None for a point mass
        (deterministic drafts: n-gram lookup, greedy draft model)."""
        ...
