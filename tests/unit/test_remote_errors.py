"""How the remote backend classifies an upstream's error answers, and what the client then sees:
backpressure (429, 503 + Retry-After) is retryable and passes Retry-After on; 5xx is a fault;
4xx is the client's problem and keeps its status."""

from __future__ import annotations

import pytest

from serve.api.state import to_api_error
from serve.backends.base import BackendBusy, BackendUnavailable
from serve.backends.remote import _upstream_error


@pytest.mark.parametrize(("status", "retry_after", "kind", "client_status", "header"), [
    (429, "7", BackendBusy, 429, "7"),  # backpressure: the upstream's own Retry-After passes through
    (429, None, BackendBusy, 429, "1"),
    (429, "Wed, 21 Oct 2015 07:28:00 GMT", BackendBusy, 429, "1"),  # a date is not passed on
    (503, "3", BackendBusy, 503, "3"),  # an overloaded upstream asking for patience: busy, not broken
    (503, None, BackendUnavailable, 503, "1"),
    (500, None, BackendUnavailable, 503, "1"),  # our replica is unavailable, whatever broke upstream
])
def test_upstream_status_classification(status: int, retry_after: str | None, kind: type,
                                        client_status: int, header: str) -> None:
    err = _upstream_error(status, '{"error": {"message": "nope"}}', retry_after)
    assert type(err) is kind
    api = to_api_error(err)
    assert api.status == client_status and api.headers == {"Retry-After": header}


def test_upstream_client_error_keeps_its_status_and_is_not_retryable() -> None:
    err = _upstream_error(400, '{"error": {"message": "bad", "param": "max_tokens", "code": "x"}}')
    assert not isinstance(err, BackendUnavailable) and (err.status, err.param, err.code) == (400, "max_tokens", "x")
