"""Frozen configuration of the native engine: cache, scheduler, and the runner fields they wrap.

Validation raises ValueError with a message a user can act on. `EngineConfig.from_options` turns a
replica's `options` dict (strings from a YAML file or CLI) into a config and names unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from serve.sampling_params import LOGPROBS_MODES
from serve.spec_decode.config import SpecDecodeConfig

SCHEDULING_POLICIES = ("fcfs", "priority")
DTYPES = ("bfloat16", "float16", "float32", "auto")


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16  # tokens per KV block
    enable_prefix_caching: bool = True
    kv_cache_bytes: int = 1 << 30  # the runner sizes num_blocks from this

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.kv_cache_bytes < 1:
            raise ValueError(f"kv_cache_bytes must be positive, got {self.kv_cache_bytes}")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # requests in one step's batch
    # Token budget of one step (prefill chunks + decodes). 1024 measured best on 2 CPU cores (c=32,
    # 128-token prompts: 609 / 649 / 634 tok/s at 512 / 1024 / 2048): fewer, larger prefill chunks.
    max_num_batched_tokens: int = 1024
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"  # "priority": lower `priority` runs first, ties by arrival

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.policy not in SCHEDULING_POLICIES:
            raise ValueError(f"unknown scheduling policy {self.policy!r}; choose one of: "
                             f"{', '.join(SCHEDULING_POLICIES)}")


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    dtype: str = "auto"  # bf16 where the hardware has it (CUDA, AVX-512 BF16 / AMX), else f32
    device: str = "auto"
    attention_backend: str = "auto"
    max_model_len: int | None = None  # None: the model's own limit
    num_threads: int | None = None
    quantization: str = "auto"  # the checkpoint's own format (GPTQ dir, GGUF) or a quant method name
    # Decode steps replay CUDA graphs on CUDA (triton attention); `-o cuda_graphs=false` runs every step
    # eagerly (vLLM's enforce_eager). Graphs are captured at start for batches up to
    # min(max_graph_batch, max_num_seqs).
    cuda_graphs: bool = True
    max_graph_batch: int = 256
    logprobs_mode: str = "raw_logprobs"  # or "processed_logprobs": what logprobs describe (serve/sampling)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpecDecodeConfig = field(default_factory=SpecDecodeConfig)

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("EngineConfig needs a model_path")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.max_graph_batch < 1:
            raise ValueError(f"max_graph_batch must be >= 1, got {self.max_graph_batch}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"unknown logprobs_mode {self.logprobs_mode!r}; choose one of: {', '.join(LOGPROBS_MODES)}")

    @classmethod
    def from_options(cls, model_path: str, options: dict[str, Any]) -> EngineConfig:
        """Build from a flat dict of knobs (a replica's `options`); unknown keys are an error."""
        groups = {"cache": CacheConfig, "scheduler": SchedulerConfig, "speculative": SpecDecodeConfig}
        top = {f.name for f in fields(cls)} - {"model_path", *groups}
        known = top | {f.name for g in groups.values() for f in fields(g)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown native engine option(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {k: _coerce(cls, k, v) for k, v in options.items() if k in top}
        for name, group in groups.items():
            names = {f.name for f in fields(group)}
            kwargs[name] = group(**{k: _coerce(group, k, v) for k, v in options.items() if k in names})
        return cls(model_path=model_path, **kwargs)

    def runner_kwargs(self) -> dict[str, Any]:
        """The RunnerConfig fields (kept as a dict so this module never imports the data plane)."""
        return {"model_path": self.model_path, "dtype": self.dtype, "device": self.device,
                "block_size": self.cache.block_size, "kv_cache_bytes": self.cache.kv_cache_bytes,
                "attention_backend": self.attention_backend, "max_model_len": self.max_model_len,
                "num_threads": self.num_threads, "quantization": self.quantization,
                "cuda_graphs": self.cuda_graphs,
                # a decode step never holds more sequences than the scheduler batches
                "max_graph_batch": min(self.max_graph_batch, self.scheduler.max_num_seqs),
                "logprobs_mode": self.logprobs_mode}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Options from YAML or `key=value` CLI flags may arrive as strings: convert to the field's type."""
    if not isinstance(value, str):
        return value
    kind = str(next(f.type for f in fields(cls) if f.name == name))
    try:
        if kind.startswith("bool"):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return None if value.lower() == "none" else int(value)
        if kind.startswith("str | None") and value.lower() == "none":
            return None
    except ValueError:
        raise ValueError(f"option {name}={value!r} is not a valid {kind}") from None
    return value
