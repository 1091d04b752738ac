"""The contract between the control plane (scheduler) and the data plane (model runner).

The scheduler speaks ints and lists; the runner turns one `StepBatch` into one forward pass over all
scheduled tokens (prefill chunks and decodes packed together) and returns what it sampled.

Paged KV layout: position `p` of a request lives in physical block `block_table[p // block_size]` at
offset `p % block_size`. Block ids run from 0 to `num_blocks - 1` of the runner's KV cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serve.sampling_params import SamplingParams


@dataclass(frozen=True)
class ScheduledSeq:
    req_id: str
    token_ids: list[int]  # tokens to compute this step: a prompt chunk, or the last token (+ drafts)
    start_pos: int  # absolute position of token_ids[0] == tokens already in the KV cache
    block_table: list[int]  # covers positions [0, start_pos + len(token_ids))
    # Rows of logits to sample, taken from the last `num_logits` positions of token_ids:
    # 0 for a prompt chunk that does not reach the prompt's end, 1 for a normal step,
    # 1 + k when verifying k draft tokens.
    num_logits: int
    params: SamplingParams
    prompt_token_ids: list[int]  # read-only views; penalties and n-gram proposers read them
    output_token_ids: list[int]
    # Index of the sample among n (its generator is seeded with seed + sample_index when seeded).
    sample_index: int = 0


@dataclass(frozen=True)
class StepBatch:
    seqs: list[ScheduledSeq]
    # Requests finished or aborted since the last step: the runner drops per-request state (RNGs).
    finished_req_ids: list[str] = field(default_factory=list)
    # Structured output: the first logits row (in batch order) of each constrained sequence -> its
    # grammar over its rows (serve/structured/rows.MatcherRows, the sampler's Constraint). The
    # runner's sampler masks or checks those rows. None: no constrained sequence in the step.
    grammars: Mapping[int, Any] | None = None

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    logprob: float | None = None  # of the chosen token (serve/sampling/logprobs.py: raw or processed)
    top_logprobs: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), best first


@dataclass(frozen=True)
class RunnerOutput:
    # req_id -> one SampledToken per logits row requested (num_logits of them; empty for mid-prompt).
    sampled: dict[str, list[SampledToken]]
