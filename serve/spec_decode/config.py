"""SpecDecodeConfig: server-level speculative decoding knobs of the native engine (pure Python).

Option names follow vLLM's `--speculative-config` keys (prefixed where a bare name would be
ambiguous among a replica's options), so one replica config reads the same across backends:
`speculative_method`, `num_speculative_tokens`, `speculative_model`, `prompt_lookup_max`,
`prompt_lookup_min`, `speculative_disable_by_batch_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEC_METHODS = ("none", "ngram", "draft")
# Quant methods tried for the quantized self-draft, fastest first on this project's CPUs (decode at
# batch 1 is bound by reading weights: int8 reads a quarter of float32's bytes). "none" always loads.
DRAFT_QUANT_PREFERENCE = ("w8a8", "int8", "gguf", "none")


@dataclass(frozen=True)
class SpecDecodeConfig:
    speculative_method: str = "none"  # "ngram" (prompt lookup) | "draft" (a second, cheaper model)
    num_speculative_tokens: int = 4  # k: drafted tokens verified per step (the maximum when adaptive)
    # Draft checkpoint (same tokenizer). None with method "draft": the target itself, quantized.
    speculative_model: str | None = None
    # Quant method of the draft model; "auto" picks the first of DRAFT_QUANT_PREFERENCE that loads.
    speculative_quantization: str = "auto"
    prompt_lookup_max: int = 4  # longest suffix n-gram searched (ngram method)
    prompt_lookup_min: int = 1  # shortest
    # Do not propose when more requests than this are running: verifying k + 1 tokens per request
    # stops being nearly free once the step is compute-bound (0: never disable).
    # Measured (benchmarks/spec_decode.py, f32 target, 1 thread): with copyable text n-gram speculation
    # still paid at 16 (1.65x, down from 2.2x at 1-4) while failing drafts cost 0.8x at 8 and 0.72x at
    # 16; 8 keeps the gain where it is large and stops the loss where it grows.
    speculative_disable_by_batch_size: int = 8
    # Adapt k per request to its recent acceptance (up to num_speculative_tokens), and pause proposing
    # for requests whose drafts keep failing.
    speculative_adaptive: bool = True

    def __post_init__(self) -> None:
        if self.speculative_method not in SPEC_METHODS:
            raise ValueError(f"unknown speculative_method {self.speculative_method!r}; choose one of: "
                             f"{', '.join(SPEC_METHODS)}")
        if not 1 <= self.num_speculative_tokens <= 32:
            raise ValueError(f"num_speculative_tokens must be between 1 and 32, got {self.num_speculative_tokens}")
        if self.prompt_lookup_min < 1 or self.prompt_lookup_max < self.prompt_lookup_min:
            raise ValueError(f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                             f"{self.prompt_lookup_min} and {self.prompt_lookup_max}")
        if self.speculative_disable_by_batch_size < 0:
            raise ValueError("speculative_disable_by_batch_size must be >= 0 (0: never disable)")
        if self.speculative_model is not None and self.speculative_method != "draft":
            raise ValueError("speculative_model needs speculative_method=draft")

    @property
    def enabled(self) -> bool:
        return self.speculative_method != "none"
