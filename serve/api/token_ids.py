"""Token ids from clients are range-checked here, at the API: an id outside the vocabulary must be
one request's 400, never an error inside an engine step (which could fail the whole batch)."""

from __future__ import annotations

from collections.abc import Iterable

from serve.api.errors import invalid


def check_token_ids(ids: Iterable[int], vocab_size: int | None, param: str) -> None:
    if vocab_size is None:  # unknown here (a remote upstream): the upstream checks its own
        return
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise invalid(f"token id {bad} in '{param}' is outside the vocabulary [0, {vocab_size})", param,
                      "invalid_token_id")
