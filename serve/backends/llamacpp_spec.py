"""Prompt-lookup speculative decoding for the llama.cpp backend: its config and its per-step bookkeeping.

The option keys are the ones the native engine and the vLLM backend read (`-o key=value`):
`speculative_method` ("ngram"; "draft" needs a second model, which this backend does not run),
`num_speculative_tokens` (the most drafts per step), `prompt_lookup_max`, `prompt_lookup_min`,
`speculative_disable_by_batch_size` (no speculation in a step with more running requests than that; 0,
the default here, never disables: llama.cpp's quantized matmuls cost nearly the same per row at any
batch size on CPU, so speculation pays about as well at 8 requests as at 1, measured),
`speculative_adaptive` (default on here: fewer drafts while a request's acceptance is low, see
`SpecState.draft_len`; without it open-ended chat ran at 0.48x of plain). Per request, the body field
`num_speculative_tokens` (SamplingParams) lowers k; 0 turns speculation off for that request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.spec_decode.ngram import propose_ngram

SPEC_OPTION_TYPES: dict[str, type] = {
    "speculative_method": str,
    "num_speculative_tokens": int,
    "prompt_lookup_max": int,
    "prompt_lookup_min": int,
    "speculative_disable_by_batch_size": int,
    "speculative_adaptive": bool,
    # Draft-model keys of the native engine: recognised only to say clearly that they do not apply.
    "speculative_model": str,
    "speculative_quantization": str,
}
_DRAFT_ONLY = ("speculative_model", "speculative_quantization")
_OFF = ("", "none", "off")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class PromptLookupConfig:
    num_speculative_tokens: int = 4  # k: drafts verified per step
    prompt_lookup_max: int = 4  # longest suffix n-gram searched
    prompt_lookup_min: int = 2  # shortest; 1-token matches are mostly noise on chat text
    disable_by_batch_size: int = 0  # 0: never disabled
    adaptive: bool = True  # draft length follows each request's acceptance

    def __post_init__(self) -> None:
        checks = (
            (1 <= self.num_speculative_tokens <= 32, "num_speculative_tokens", self.num_speculative_tokens,
             "between 1 and 32"),
            (self.prompt_lookup_min >= 1, "prompt_lookup_min", self.prompt_lookup_min, ">= 1"),
            (self.prompt_lookup_max >= self.prompt_lookup_min, "prompt_lookup_max", self.prompt_lookup_max,
             f">= prompt_lookup_min ({self.prompt_lookup_min})"),
            (self.disable_by_batch_size >= 0, "speculative_disable_by_batch_size", self.disable_by_batch_size,
             ">= 0"),
        )
        for ok, key, value, bound in checks:
            if not ok:
                raise ValueError(f"llamacpp option {key} must be {bound}, got {value}")

    def active(self, batch_size: int) -> bool:
        return self.disable_by_batch_size == 0 or batch_size <= self.disable_by_batch_size


_FIELD = {"speculative_disable_by_batch_size": "disable_by_batch_size",  # option key -> field name
          "speculative_adaptive": "adaptive"}


def spec_config_from_options(options: dict[str, Any]) -> PromptLookupConfig | None:
    """The speculative keys of a replica's options -> config, or None when speculation is off.

    Raises ValueError naming the key for a bad value, an unsupported method, or tuning keys given
    without a method (they would silently do nothing).
    """
    given = {k: v for k, v in options.items() if k in SPEC_OPTION_TYPES}
    method = str(given.pop("speculative_method", "") or "").strip().lower()
    for key in _DRAFT_ONLY:
        if key in given:
            raise ValueError(f"llamacpp option {key} belongs to speculative_method=draft, which this backend "
                             "does not support (it runs one model); use speculative_method=ngram")
    if method in _OFF:
        if given:
            raise ValueError(f"llamacpp option(s) {', '.join(sorted(given))} need speculative_method=ngram")
        return None
    if method != "ngram":
        raise ValueError(f"llamacpp option speculative_method={method!r} is not supported: this backend "
                         "runs one model, so only 'ngram' (prompt lookup) is available")
    return PromptLookupConfig(**{_FIELD.get(k, k): _typed(k, v) for k, v in given.items()})


def _typed(key: str, value: Any) -> int | bool:
    if SPEC_OPTION_TYPES[key] is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() not in _BOOLS:
            raise ValueError(f"llamacpp option {key} must be true or false, got {value!r}")
        return _BOOLS[str(value).strip().lower()]
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"llamacpp option {key} must be an integer, got {value!r}") from None


# Adaptive draft length. Model: each draft is accepted with probability a once the earlier ones were,
# so the j-th draft adds a**j expected tokens while costing one more row of the verify batch. On this
# CPU a row costs ~0.5-0.8 of a whole one-row step (llama.cpp's quantized matmuls scale almost
# linearly with rows), so a draft is worth sending only when a**j >= _WORTH. `a` is estimated per
# request from decayed counts (copying phases come and go); a request that stops drafting still
# probes with one draft every _PROBE steps so it notices when copying starts.
_WORTH = 0.6
_DECAY = 0.8
_PROBE = 8


@dataclass
class SpecState:
    """Per-request proposer state: prompt + output tokens in a preallocated int32 buffer (a proposal
    never converts a Python list; that would cost more than the search) and the acceptance estimate."""

    buf: np.ndarray  # [capacity] int32
    n: int = 0
    accepted_w: float = 4.0  # decayed accepted drafts; the prior (4 of 5) starts at full length
    rejected_w: float = 1.0  # decayed rejections (at most one per verify step)
    idle_steps: int = 0

    @classmethod
    def for_prompt(cls, prompt: list[int], max_new: int) -> SpecState:
        buf = np.empty(len(prompt) + max_new + 1, dtype=np.int32)
        buf[: len(prompt)] = prompt
        return cls(buf, len(prompt))

    def append(self, token: int) -> None:
        if self.n < self.buf.shape[0]:
            self.buf[self.n] = token
            self.n += 1

    def acceptance(self) -> float:
        """Estimated probability that a draft is accepted given the earlier ones were."""
        return self.accepted_w / (self.accepted_w + self.rejected_w)

    def draft_len(self, k: int) -> int:
        """How many drafts (<= k) pay off at the current acceptance estimate."""
        a, j = self.acceptance(), 0
        while j < k and a ** (j + 1) >= _WORTH:
            j += 1
        if j == 0 and k > 0:
            self.idle_steps += 1
            if self.idle_steps >= _PROBE:
                self.idle_steps = 0
                return 1
        return j

    def record(self, drafted: int, accepted: int) -> None:
        self.accepted_w = _DECAY * self.accepted_w + accepted
        self.rejected_w = _DECAY * self.rejected_w + (1 if accepted < drafted else 0)

    def propose(self, cfg: PromptLookupConfig, k: int) -> list[int]:
        if k <= 0:
            return []
        return propose_ngram(self.buf[: self.n], k, cfg.prompt_lookup_max, cfg.prompt_lookup_min)
