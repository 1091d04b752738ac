"""EngineConfig / CacheConfig / SchedulerConfig validation and parsing of replica options."""

from __future__ import annotations

import pytest

from serve.engine.config import CacheConfig, EngineConfig, SchedulerConfig


def test_options_from_strings_are_typed_and_grouped() -> None:
    cfg = EngineConfig.from_options("m.gguf", {"block_size": "32", "enable_prefix_caching": "false",
                                               "max_num_seqs": 8, "max_model_len": "none", "dtype": "float32",
                                               "policy": "priority"})
    assert cfg.cache == CacheConfig(block_size=32, enable_prefix_caching=False)
    assert cfg.scheduler == SchedulerConfig(max_num_seqs=8, policy="priority")
    assert cfg.max_model_len is None and cfg.dtype == "float32"
    assert cfg.runner_kwargs()["block_size"] == 32 and cfg.runner_kwargs()["model_path"] == "m.gguf"
    assert cfg.runner_kwargs()["logprobs_mode"] == "raw_logprobs"  # vLLM's default
    processed = EngineConfig.from_options("m.gguf", {"logprobs_mode": "processed_logprobs"})
    assert processed.runner_kwargs()["logprobs_mode"] == "processed_logprobs"


@pytest.mark.parametrize(("options", "message"), [
    ({"n_parallel": 4}, "unknown native engine option"),
    ({"block_size": 12}, "power of two"),
    ({"block_size": "big"}, "not a valid int"),
    ({"enable_prefix_caching": "maybe"}, "not a valid bool"),
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
    ({"policy": "lifo"}, "scheduling policy"),
    ({"dtype": "int3"}, "dtype"),
    ({"max_model_len": 1}, "max_model_len"),
    ({"kv_cache_bytes": 0}, "kv_cache_bytes"),
    ({"logprobs_mode": "raw_logits"}, "logprobs_mode"),
])
def test_bad_options_are_clear_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_options("m.gguf", options)


def test_configs_are_frozen() -> None:
    cfg = SchedulerConfig()
    with pytest.raises(AttributeError):
        cfg.max_num_seqs = 3  # type: ignore[misc]
