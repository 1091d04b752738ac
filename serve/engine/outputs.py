"""What one engine step reports per request: new tokens and text since the previous report."""

from __future__ import annotations

from dataclasses import dataclass

from serve.engine.batch import SampledToken
from serve.engine.request import Request


@dataclass(slots=True)  # not frozen: built per request per step, and frozen init costs 2x
class RequestOutput:
    req_id: str
    group_id: str  # the client request; n > 1 samples share it
    index: int  # sample index among n
    new_token_ids: list[int]
    new_text: str
    logprobs: list[SampledToken] | None  # one per new token when the request asked for logprobs
    finish_reason: str | None  # "stop" | "length" | "abort"; None while running
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served by the prefix cache
    num_output_tokens: int
    queue_time_s: float | None = None  # arrival -> first scheduled
    stop_reason: int | str | None = None
    error: str | None = None  # set when the step failed and the request was aborted for it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def make_output(req: Request, new_token_ids: list[int], error: str | None = None) -> RequestOutput:
    """Snapshot `req` after a step. Takes (and clears) its pending logprobs and releasable text."""
    finished = req.is_finished
    text = ""
    if req.detokenizer is not None:
        if finished:
            req.detokenizer.flush()
        text = req.detokenizer.take_new_text(finished)
    logprobs = None
    if req.params.logprobs is not None:
        logprobs, req.new_logprobs = req.new_logprobs, []
    queue = None if req.first_scheduled_time is None else req.first_scheduled_time - req.arrival_time
    return RequestOutput(
        req_id=req.req_id, group_id=req.group_id, index=req.sample_index, new_token_ids=new_token_ids,
        new_text=text, logprobs=logprobs, finish_reason=req.status.finish_reason,
        num_prompt_tokens=req.num_prompt_tokens, num_cached_tokens=max(req.num_cached_tokens, 0),
        num_output_tokens=req.num_output_tokens, queue_time_s=queue, stop_reason=req.stop_reason,
        error=error)
