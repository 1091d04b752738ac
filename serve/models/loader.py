"""Checkpoint loading: a .gguf file or an HF-style directory (config.json + *.safetensors).

Public entry points used by the control plane and the HTTP layer:
    load_model_config(path) -> ModelArchConfig
    load_tokenizer(path)    -> transformers fast tokenizer, chat_template set when the checkpoint has one
    load_model(path, dtype=..., device=..., attention_backend=..., quant=...) -> LlamaForCausalLM (weights loaded)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from serve.attention.base import get_backend
from serve.layers.quant.block_call import block_kernel_method
from serve.layers.quant.checkpoint_loading import adapt_weights, resolve_quant
from serve.models.config import ModelArchConfig, from_hf_dict
from serve.models.gguf_reader import GGUFModelFile
from serve.models.registry import model_class
from serve.models.tokenizer import load_tokenizer_from

log = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
DTYPE_CHOICES = (*DTYPES, "auto")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them torch's CPU bf16 matmul is emulated and slower than float32."""
    from sluice_kernels.cpu.features import cpu_info

    flags = cpu_info().flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on CUDA and on CPUs with native bf16, else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


class CheckpointError(ValueError):
    """The path is not a checkpoint we can load; the message says what was expected."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A .gguf file, an HF directory, or a directory holding exactly one .gguf file."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise CheckpointError(f"{p} is a file but not a .gguf; give a GGUF file or an HF-style directory")
        return p
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise CheckpointError(f"{p} has no config.json and {len(ggufs)} .gguf files; cannot tell what to load")
    raise CheckpointError(f"model path {p} does not exist")


def _is_gguf(p: Path) -> bool:
    return p.is_file()


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {p}: {e}") from e


def load_model_config(path: str | Path) -> ModelArchConfig:
    p = resolve_checkpoint(path)
    if _is_gguf(p):
        return GGUFModelFile(p).arch_config()
    cfg = from_hf_dict(_read_json(p / "config.json"))
    gen = p / "generation_config.json"
    if gen.is_file():  # instruct models often list their end-of-turn ids only here
        extra = _read_json(gen).get("eos_token_id")
        extra = extra if isinstance(extra, list) else [] if extra is None else [extra]
        eos = tuple(dict.fromkeys([*cfg.eos_token_ids, *(int(e) for e in extra)]))
        cfg = ModelArchConfig(**{**cfg.__dict__, "eos_token_ids": eos})
    return cfg


def chat_template(path: str | Path) -> str | None:
    """The chat template stored with the checkpoint (GGUF metadata or tokenizer files), if any."""
    p = resolve_checkpoint(path)
    if _is_gguf(p):
        return GGUFModelFile(p).chat_template()
    jinja = p / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    tc = p / "tokenizer_config.json"
    return _read_json(tc).get("chat_template") if tc.is_file() else None


def load_tokenizer(path: str | Path) -> Any:
    p = resolve_checkpoint(path)
    return load_tokenizer_from(p, chat_template(p))


def iter_weights(path: str | Path, cfg: ModelArchConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs in HF layout; GGUF tensors dequantized to float32."""
    p = resolve_checkpoint(path)
    if _is_gguf(p):
        yield from GGUFModelFile(p).tensors(cfg)
        return
    from safetensors import safe_open

    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{p} has config.json but no *.safetensors weights")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not a dict
                yield name, st.get_tensor(name)


def checkpoint_weights(p: Path, cfg: ModelArchConfig, quant: str) -> Iterable[tuple[str, Any]]:
    """The weight stream in the form `quant` takes: GGUF Q4 blocks undecoded for "gguf", GPTQ tensors
    grouped per module for GPTQ checkpoints, float tensors otherwise."""
    if quant == "gguf":
        from serve.layers.quant.gguf import gguf_int4_weights

        return gguf_int4_weights(p, cfg)
    return adapt_weights(p, iter_weights(p, cfg))


def load_model(path: str | Path, dtype: str = "auto", device: str | torch.device = "cpu",
               attention_backend: str = "auto", quant: str = "auto",
               max_positions: int | None = None, block_size: int = 16) -> torch.nn.Module:
    """Build the model for the checkpoint's architecture and load its weights (eval, no grad).

    quant: "auto" (the checkpoint's own format: GPTQ dir -> "gptq", GGUF -> "gguf" (on a float32 CPU:
    "int8_bf16act", see `auto_quant`), else "none") or a
    registered quant method name. The method used is logged and kept as `model.quantization`.
    """
    dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    p = resolve_checkpoint(path)
    cfg = load_model_config(p)
    method = resolve_quant(p, quant, dev, torch_dtype)
    if dtype == "auto" and torch_dtype != torch.float32 and block_kernel_method(method, dev):
        # The CPU block kernels quantize activations to int8 per 32-block themselves and the fused
        # norm / SwiGLU / RoPE kernels beside them are float32: bf16 activations would only add a
        # conversion around every op (measured on an AVX-512 BF16 EPYC: decode 134 -> 162 tok/s at
        # batch 1, 614 -> 766 at batch 32 with float32).
        torch_dtype = torch.float32
    log.info("loading %s: quantization=%s (requested %s), dtype=%s", p.name, method, quant, torch_dtype)
    backend = get_backend(attention_backend, dev, block_size)
    with dev:
        model = model_class(cfg.architecture)(cfg, backend, torch_dtype, quant=method, max_positions=max_positions)
    with torch.no_grad():
        model.load_weights(checkpoint_weights(p, cfg, method))
    model.quantization = method
    return model.eval()
