"""Shared, cached loads of the bundled model for the data-plane tests (one load per test session)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from serve.model_store import model_path  # noqa: E402
from tests.requirements import model_missing, require

MODEL = "smollm2-135m-instruct"


def gguf_path() -> str:
    p = model_path(MODEL)
    if not p.is_file():
        require("model", model_missing(MODEL))
    return str(p)


def llamacpp_engine(**options: Any) -> Iterator[Any]:
    """A real llama.cpp engine on the bundled GGUF, closed when done; for a fixture:
    `yield from llamacpp_engine(n_parallel=2, n_ctx_per_seq=256, n_threads=1)`."""
    from serve.backends.llamacpp_engine import LlamaCppEngine, LlamaCppOptions

    eng = LlamaCppEngine(LlamaCppOptions(gguf_path(), **options))
    try:
        yield eng
    finally:
        eng.close()


@functools.lru_cache(maxsize=2)
def runner(dtype: str = "float32"):
    """A real ModelRunner on the bundled GGUF, dequantized to float (quantization="none": the runner and
    equivalence tests compare float paths), with a small KV cache (256 blocks of 16 tokens)."""
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    path = gguf_path()
    return ModelRunner(RunnerConfig(path, dtype=dtype, device="cpu", kv_cache_bytes=256 * 368_640 * 2,
                                    max_model_len=2048, quantization="none"))


@functools.lru_cache(maxsize=1)
def hf_model():
    """transformers' own Llama on the same GGUF (dequantized by transformers to float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = gguf_path()
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                             dtype=torch.float32)
    return m.eval()


def quantized_kernel_layers(model: object) -> int:
    """Linears running a quantized kernel (torch's int4 kernel or the AVX2 block kernels), not a
    dequantized float weight."""
    return sum(hasattr(m, "int4") or hasattr(m, "block_call") or hasattr(m, "block_parts")
               for m in model.modules())

