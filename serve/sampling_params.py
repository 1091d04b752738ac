"""SamplingParams: the one place request knobs are validated. Every backend receives this."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from serve.structured.spec import StructuredSpec

# Below this a temperature counts as 0 (greedy), vLLM's rule: logits / 1e-164 overflow to inf and
# softmax turns them into NaN, which no draw can use.
GREEDY_BELOW = 1e-5

# What logprobs describe, a server setting (vLLM's --logprobs-mode): the model's raw distribution
# (default) or the processed one the token was drawn from. serve/sampling/logprobs.py says exactly.
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


class ParamError(ValueError):
    """A request parameter is invalid. `param` names it for the OpenAI error envelope."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    max_tokens: int | None = None  # None: up to the context limit
    temperature: float = 1.0  # 0 (or below GREEDY_BELOW) means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k >= 0: chosen token's logprob plus top-k alternatives
    logit_bias: dict[int, float] = field(default_factory=dict)
    echo: bool = False
    # Speculative decoding per request (native engine): None = the server's setting, 0 = off,
    # k = at most k draft tokens per step (never more than the server's num_speculative_tokens).
    num_speculative_tokens: int | None = None
    # The one output constraint (JSON schema, regex, choice, grammar); None: free text. One field, so
    # two constraints cannot be expressed: the HTTP layer refuses a request that sets two.
    structured: StructuredSpec | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (1 <= self.n <= 128, "n", "n must be between 1 and 128"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "max_tokens must be >= 1"),
            (0.0 <= self.temperature <= 2.0, "temperature", "temperature must be between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "top_p must be in (0, 1]"),
            (self.top_k >= -1, "top_k", "top_k must be -1, 0 (disabled) or a positive integer"),
            (0.0 <= self.min_p <= 1.0, "min_p", "min_p must be between 0 and 1"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "presence_penalty must be between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "frequency_penalty must be between -2 and 2"),
            (0.0 < self.repetition_penalty <= 10.0, "repetition_penalty", "repetition_penalty must be in (0, 10]"),
            (len(self.stop) <= 16, "stop", "at most 16 stop sequences are allowed"),
            (all(s for s in self.stop), "stop", "stop sequences must be non-empty strings"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "logprobs must be between 0 and 20"),
            (all(-100.0 <= v <= 100.0 for v in self.logit_bias.values()), "logit_bias",
             "logit_bias values must be between -100 and 100"),
            (all(t >= 0 for t in self.logit_bias), "logit_bias", "logit_bias keys must be token ids >= 0"),
            # vLLM's range too; the samplers map it onto their generators' own (numpy's is unsigned).
            (self.seed is None or -(1 << 63) <= self.seed < (1 << 63), "seed", "seed must be a signed 64-bit integer"),
            (self.num_speculative_tokens is None or 0 <= self.num_speculative_tokens <= 32,
             "num_speculative_tokens", "num_speculative_tokens must be between 0 and 32"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise ParamError(param, message)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    """ParamError naming `param` for any id outside [0, vocab_size): one bad id must be refused at the
    door, never reach a batched step it would fail for everyone."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ParamError(param, f"token id {bad} in '{param}' is outside the vocabulary [0, {vocab_size})")


def check_params_ids(params: SamplingParams, vocab_size: int) -> None:
    check_token_ids(params.stop_token_ids, vocab_size, "stop_token_ids")
    check_token_ids(list(params.logit_bias or ()), vocab_size, "logit_bias")
