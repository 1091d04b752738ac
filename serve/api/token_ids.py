"""Token ids from clients are range-checked here, at the API: an id outside the vocabulary must be
one request's 400, never an error inside an engine step (which could fail the whole batch). The rule
itself lives in serve.sampling_params, which the native engine applies again at its own door."""

from __future__ import annotations

from collections.abc import Iterable

from serve import sampling_params as sp
from serve.api.errors import invalid
from serve.sampling_params import ParamError, SamplingParams


def check_token_ids(ids: Iterable[int], vocab_size: int | None, param: str) -> None:
    if vocab_size is None:  # unknown here (a remote upstream): the upstream checks its own
        return
    try:
        sp.check_token_ids(list(ids), vocab_size, param)
    except ParamError as e:
        raise invalid(str(e), e.param, "invalid_token_id") from e


def check_request_ids(prompt: Iterable[int], params: SamplingParams, vocab_size: int | None) -> None:
    """The prompt's ids and those in stop_token_ids and logit_bias."""
    check_token_ids(prompt, vocab_size, "prompt")
    check_token_ids(params.stop_token_ids, vocab_size, "stop_token_ids")
    check_token_ids(params.logit_bias or (), vocab_size, "logit_bias")
