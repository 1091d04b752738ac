"""One measured request: what the client saw, with monotonic timestamps.

All times are seconds on one monotonic clock (`time.monotonic()`, CLOCK_MONOTONIC on Linux, which is
system-wide, so a server process on the same machine shares it). In memory they are absolute; in the
result JSON they are relative to the run's start (see `to_json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    index: int  # order in which the request was sent within its run
    sent: float  # request handed to the HTTP client
    end: float  # last event of the stream received (or the failure observed)
    written: float | None = None  # request body fully written to the socket (httpx trace)
    # Arrival time of every chunk that carried generated content (role-only chunks excluded).
    chunk_times: tuple[float, ...] = ()
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str = "none"  # "usage" (server's count) | "tokenizer" (our count) | "none"
    expected_prompt_tokens: int | None = None  # what the workload asked for
    expected_output_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens when the server says
    finish_reason: str | None = None
    error_kind: str | None = None  # None: success; else http_<status> | timeout | connect | read | ...
    error: str | None = None
    status: int | None = None
    conversation: int = 0
    turn: int = 0
    client_overhead: float = 0.0  # seconds our client spent parsing this request's events
    events: int = 0  # SSE data events parsed (content, role-only, usage, [DONE])
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def client_send(self) -> float | None:
        """Our own cost before the server could see the request: sent -> body on the socket."""
        return None if self.written is None else self.written - self.sent

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.sent

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output_tokens - 1); undefined for fewer than two output tokens."""
        ttft = self.ttft
        if ttft is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.e2e - ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between successive content chunks of this request."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    def to_json(self, origin: float) -> dict[str, Any]:
        """Timeline fields in seconds from the run's start; latencies in milliseconds (`*_ms`)."""
        d = asdict(self)
        d["sent"] = round(self.sent - origin, 6)
        d["end"] = round(self.end - origin, 6)
        d["written"] = None if self.written is None else round(self.written - origin, 6)
        d["chunk_times"] = [round(t - self.sent, 6) for t in self.chunk_times]  # seconds after `sent`
        d["client_overhead"] = round(self.client_overhead, 9)
        for name in ("ttft", "tpot", "e2e"):
            v = getattr(self, name)
            d[f"{name}_ms"] = None if v is None else round(v * 1e3, 4)
        return d


def record_from_json(d: dict[str, Any]) -> RequestRecord:
    """Inverse of `to_json` (times come back relative to the run's start)."""
    fields = {k: v for k, v in d.items() if k in RequestRecord.__dataclass_fields__}
    fields["chunk_times"] = tuple(d["sent"] + t for t in d.get("chunk_times", ()))
    fields.pop("client_send", None)
    return RequestRecord(**fields)
