"""Per-request limits: the sizes and times one request may claim, so that no request can starve another.

Defaults are roomy enough for real clients (agent frameworks send long tool lists and long chats) and
sit near what vLLM and llama-server accept; a server exposed to untrusted clients should tighten them.
Every limit is configurable from `[limits]` in the config file and from `sluice serve --limit-*` flags.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    max_messages: int = 2048  # chat messages in one request
    max_prompt_tokens: int = 131072  # after templating and tokenizing; the model's context still applies
    max_tokens: int = 32768  # max_tokens / max_completion_tokens a client may ask for
    max_n: int = 16  # choices per prompt
    max_stop: int = 16  # stop sequences
    max_stop_chars: int = 512  # characters of each stop sequence
    max_logit_bias: int = 1024  # logit_bias entries
    max_prompts: int = 64  # prompts in one /v1/completions batch
    max_tools_bytes: int = 256 * 1024  # the `tools` list as JSON
    max_schema_bytes: int = 64 * 1024  # `response_format` (its JSON schema) as JSON
    request_timeout_s: float = 600.0  # wall clock from parse to last token (llama-server's --timeout); 0 = off
    body_timeout_s: float = 30.0  # to receive the whole request body; slow senders get 408; 0 = off

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"limits.{f.name} must be a number, got {value!r}")
            floor = 0 if f.name.endswith("_s") else 1
            if value < floor:
                raise ValueError(f"limits.{f.name} must be >= {floor}, got {value}")


LIMIT_NAMES = tuple(f.name for f in fields(Limits))
