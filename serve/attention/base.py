"""AttentionBackend protocol and its registry. The model calls attention only through this.

KV cache layout (owned by the model runner, one pair per layer):
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], model dtype.
Slot s = block_id * block_size + offset addresses row s of the cache viewed as
[num_blocks * block_size, num_kv_heads, head_dim].
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Protocol

import torch

from serve.worker.forward_context import ForwardContext


class AttentionBackend(Protocol):
    name: str

    def prepare(self, ctx: ForwardContext) -> Any:
        """Per-step metadata (index tensors, masks) built once and shared by every layer."""
        ...

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: Any, scale: float) -> torch.Tensor:
        """Write this step's K/V into the cache at the step's slots, then attend.

        q: [T, Hq, D]; k, v: [T, Hkv, D] (already rotated); caches as in the module docstring.
        Each sequence's queries attend causally to its cached prefix plus its own earlier tokens
        of this step. Returns [T, Hq, D] in q's dtype.
        """
        ...

    # Optional, for CUDA graphs (serve/worker/cuda_graphs.py): a backend whose all-decode metadata can
    # be made of static tensors defines
    #     decode_metadata(slot_mapping, block_table, context_lens, query_start, query_lens) -> metadata
    # and its `forward` must then be graph-safe for that metadata (no host sync, fixed shapes).
    # Backends without it always run eagerly.


# Name -> "module:Class". Imported on first use so the model never imports a kernel package.
_BACKENDS = {
    "torch_sdpa": "serve.attention.torch_sdpa:TorchSDPABackend",
    "flash_attn": "serve.attention.flash_attn:FlashAttnBackend",
    "triton": "serve.attention.triton_attn:TritonAttnBackend",
}


def available_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def default_backend(device: torch.device, block_size: int) -> str:
    # flash-attn's paged kernels need pages of a multiple of 256 tokens.
    if device.type == "cuda" and block_size % 256 == 0 and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attn"
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"  # our paged kernel: any block size
    return "torch_sdpa"


def get_backend(name: str, device: torch.device, block_size: int = 16) -> AttentionBackend:
    """Instantiate the backend `name` ("auto": flash_attn on CUDA when usable, else triton on CUDA when
    installed, else torch_sdpa)."""
    if name == "auto":
        name = default_backend(device, block_size)
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; available: auto, {', '.join(_BACKENDS)}")
    module, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(device, block_size)
