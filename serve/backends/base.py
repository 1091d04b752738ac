"""The Backend protocol: what the router and the HTTP layer may ask of any engine.

The HTTP layer owns JSON and chat templates. A backend that `templates_locally` receives a rendered
prompt (text and token ids); one that does not (remote) receives the original chat messages too and
lets its upstream apply the template.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from serve.sampling_params import SamplingParams


class BackendError(Exception):
    """A backend failed. `status` and `kind` map onto the OpenAI error envelope."""

    def __init__(self, message: str, status: int = 500, kind: str = "server_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param
        self.code = code

    # Seconds (as the header's text) for the client's Retry-After; None: the HTTP layer's default.
    retry_after: str | None = None


class BackendUnavailable(BackendError):
    """The replica cannot serve now (down, crashed, connection refused). The router may retry elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503, kind="service_unavailable")


class BackendBusy(BackendUnavailable):
    """The replica is up but refuses more work now (an upstream 429, or a 503 carrying Retry-After):
    backpressure, not a fault. The router tries another replica and does not count it against this one."""

    def __init__(self, message: str, status: int = 429, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = "rate_limit_error" if status == 429 else "service_unavailable"
        self.code = "upstream_busy"
        self.retry_after = retry_after


class BackendTimeout(BackendUnavailable):
    """The replica accepted the request and then went silent past a deadline (a fault: it counts)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status = 504
        self.kind = "timeout_error"
        self.code = "upstream_timeout"


class Unsupported(BackendError):
    """A parameter we accept but this backend cannot honour: a 400 naming it, never silently dropped."""

    def __init__(self, param: str, backend: str) -> None:
        super().__init__(f"parameter '{param}' is not supported by the {backend} backend",
                         status=400, kind="invalid_request_error", param=param)


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP layer needs to know about the model a backend serves."""

    max_model_len: int
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    templates_locally: bool = True  # False: pass `messages` upstream, the upstream templates
    # Request fields this backend cannot honour; the API answers 400 naming the field when one is set.
    unsupported: frozenset[str] = frozenset()
    # Token ids a request may carry are [0, vocab_size); None when unknown (remote: its upstream checks).
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    params: SamplingParams
    prompt: str | None = None  # rendered text (chat template already applied when chat)
    prompt_token_ids: tuple[int, ...] | None = None  # set by the HTTP layer for local backends
    messages: tuple[dict[str, Any], ...] | None = None  # original chat messages (remote backends)
    model: str = ""  # the name the client asked for (remote backends forward their own)
    priority: int = 0  # lower runs first when a backend schedules by priority
    # Prefix-cache namespace (the tenant's): requests with different salts never share cached KV, so
    # one tenant cannot learn from a fast first token that another sent the same prompt. None: shared.
    cache_salt: str | None = None
    # Chat requests stop on the template's end-of-turn token; a backend adds these to its stop set.
    extra: dict[str, Any] = field(default_factory=dict)
    # OpenAI request fields a backend whose upstream decodes forwards unchanged (response_format,
    # structured_outputs, tools, tool_choice, parallel_tool_calls); local backends read params.structured.
    upstream_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    token_id: int | None = None
    bytes_: tuple[int, ...] | None = None
    top: tuple[tuple[str, float], ...] = ()  # the top alternatives at this position, best first


@dataclass(frozen=True)
class Delta:
    """New output for one choice (`index` < n). The last delta of a choice carries `finish_reason`."""

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "tool_calls"
    # OpenAI stream-delta tool_calls entries ({index, id?, type?, function: {name?, arguments}}): from
    # an upstream as sent, or from serve/api/tool_calls.py for output decoded here.
    tool_calls: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class Usage:
    """Sent once, after every choice has finished."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    queue_time_s: float | None = None  # arrival -> first scheduled, when the backend queues internally


StreamEvent = Delta | Usage


@runtime_checkable
class Backend(Protocol):
    name: str  # backend kind, e.g. "llamacpp"

    @property
    def info(self) -> ModelInfo: ...

    async def start(self) -> None:
        """Load the model / connect. Called once before any request; may take long."""

    async def stop(self) -> None:
        """Release everything. Pending generations end with finish_reason 'abort'."""

    async def check_health(self) -> bool:
        """True when the replica can serve a request now."""

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text -> token ids with this model's tokenizer. `parse_special`: special-token text such as
        `<|im_end|>` becomes its control id; False: it is tokenized as plain text (user content)."""

    async def detokenize(self, token_ids: list[int]) -> str: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        """Stream Deltas for every choice, then one Usage. Raises BackendError before the first event
        when the request cannot run; the caller closes the iterator to abort."""

    async def abort(self, request_id: str) -> None:
        """Stop a request and free what it holds. Unknown ids are ignored."""
