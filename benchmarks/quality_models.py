"""Language models that give full-sequence logits, for `sluice bench quality`.

native:       our engine's model (any checkpoint it loads: HF dir, GPTQ dir, GGUF), one prefill per
              window through the real paged attention path, plus a single-stream decode timer
transformers: LlamaForCausalLM in float32 (the independent reference)
llamacpp:     a GGUF through llama-cpp-python with logits for every position
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

import torch


class LogitsModel(Protocol):
    def logits(self, ids: list[int]) -> torch.Tensor:
        """ids [L] -> logits [L, vocab]."""
        ...


class NativeLM:
    def __init__(self, path: str, dtype: str = "bfloat16", quant: str = "auto", max_len: int = 2048,
                 block_size: int = 16) -> None:
        from serve.models.loader import load_model

        self.model = load_model(path, dtype=dtype, device="cpu", quant=quant, max_positions=max_len,
                                block_size=block_size)
        self.quantization: str = self.model.quantization
        cfg = self.model.cfg
        self.block_size = block_size
        blocks = -(-max_len // block_size)
        shape = (blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        dt = self.model.dtype
        self.model.bind_kv_cache([(torch.zeros(shape, dtype=dt), torch.zeros(shape, dtype=dt))
                                  for _ in range(cfg.num_layers)])
        self.table = list(range(blocks))

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:
        from serve.worker.forward_context import build_context

        ctx = build_context([len(ids)], [start], [self.table], self.block_size, torch.device("cpu"))
        with torch.inference_mode():
            hidden = self.model(torch.tensor(ids, dtype=torch.int64), ctx.positions, ctx)
            return hidden

    def logits(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.compute_logits(self._forward(ids, 0))

    def decode_tokens_per_s(self, prompt: list[int], steps: int, warmup: int = 4) -> float:
        """Greedy single-stream decode after a prefill of `prompt`; seconds exclude the prefill and warm-up."""
        with torch.inference_mode():
            hidden = self._forward(prompt, 0)
            tok = int(self.model.compute_logits(hidden[-1:]).argmax())
            pos = len(prompt)
            t0 = 0.0
            for i in range(warmup + steps):
                if i == warmup:
                    t0 = time.perf_counter()
                hidden = self._forward([tok], pos)
                tok = int(self.model.compute_logits(hidden).argmax())
                pos += 1
            return steps / (time.perf_counter() - t0)

    def weight_bytes(self) -> int:
        """Bytes the model holds in memory (parameters, buffers such as rotary tables, packed int4)."""
        total = sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])
        for m in self.model.modules():
            w = getattr(m, "int4", None)
            if w is not None:
                total += sum(t.numel() * t.element_size() for t in (w.packed, w.scale_zero))
        return total


class TransformersLM:
    def __init__(self, path: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def logits(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


class LlamaCppLM:
    def __init__(self, gguf: str, context: int, threads: int | None = None) -> None:
        from serve.backends.llamacpp_loader import load_llama_cpp

        self.llm = load_llama_cpp().Llama(model_path=gguf, n_ctx=context, logits_all=True, verbose=False,
                         n_threads=threads or os.cpu_count() or 1, n_batch=context)

    def logits(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(self.llm.scores[:len(ids)].copy())


def checkpoint_bytes(path: str) -> int:
    """On-disk weight bytes: the .gguf file, or the *.safetensors of an HF directory."""
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.glob("*.safetensors"))


def build(engine: str, path: str, context: int, dtype: str, quant: str) -> Any:
    if engine == "native":
        return NativeLM(path, dtype=dtype, quant=quant, max_len=max(context, 1024))
    if engine == "transformers":
        return TransformersLM(path)
    if engine == "llamacpp":
        return LlamaCppLM(path, context)
    raise ValueError(f"unknown engine {engine!r}; choose native, transformers or llamacpp")
