"""Request: the scheduler's view of one sequence (one sample of a client request).

A client request with n > 1 becomes n `Request`s sharing `group_id`; sample 0 is the leader, whose
prompt blocks the others share once its prefill is done.

Token bookkeeping (all ints): `all_token_ids` = prompt + verified outputs. Positions
[0, num_computed_tokens) have their KV in the cache; the rest still have to be computed. For a
request in decode, exactly one token (the last sampled) is not computed yet. Draft tokens live in
`spec_token_ids` and never enter `all_token_ids` until verified.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

from serve.engine.batch import SampledToken
from serve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from serve.engine.detokenizer import IncrementalDetokenizer
    from serve.engine.kv_cache.hashing import BlockHash


class RequestRejected(ValueError):
    """The request can never run here (too long for the context or the KV cache): a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
                   RequestStatus.FINISHED_ABORTED: "abort"}


class Request:
    __slots__ = ("req_id", "group_id", "sample_index", "params", "priority", "arrival_time",
                 "prompt_token_ids", "output_token_ids", "all_token_ids", "num_computed_tokens",
                 "num_cached_tokens", "max_tokens", "status", "block_hashes", "cache_salt",
                 "spec_token_ids", "detokenizer", "new_logprobs", "first_scheduled_time",
                 "num_preemptions", "stop_reason", "matcher")

    def __init__(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams, max_tokens: int,
                 *, group_id: str | None = None, sample_index: int = 0, priority: int = 0,
                 arrival_time: float | None = None, cache_salt: str | None = None) -> None:
        self.req_id = req_id
        self.group_id = group_id if group_id is not None else req_id
        self.sample_index = sample_index
        self.params = params
        self.priority = priority
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prompt tokens served by the prefix cache; -1 until first scheduled
        self.max_tokens = max_tokens  # resolved limit on output tokens (never None)
        self.status = RequestStatus.WAITING
        self.block_hashes: list[BlockHash] = []
        self.cache_salt = cache_salt
        self.spec_token_ids: list[int] = []
        self.detokenizer: IncrementalDetokenizer | None = None
        self.new_logprobs: list[SampledToken] = []  # sampled since the last output was taken
        self.first_scheduled_time: float | None = None
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        # Structured output: the grammar state after the accepted output tokens (serve.structured's
        # GrammarMatcher, opaque here); None when unconstrained.
        self.matcher: Any = None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def extra_keys(self) -> tuple[str, ...] | None:
        return (self.cache_salt,) if self.cache_salt else None

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (f"Request({self.req_id}, {self.status.name}, prompt={self.num_prompt_tokens}, "
                f"out={self.num_output_tokens}, computed={self.num_computed_tokens})")
