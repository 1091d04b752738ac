"""Which quant method a checkpoint needs, and its weight stream in the form that method takes.

The model's `load_weights` consumes (HF name, tensor) pairs with float `X.weight` tensors. A GPTQ
checkpoint instead holds `X.qweight / X.qzeros / X.scales / X.g_idx`; `gptq_weights` gathers those
four per module and yields (`X.weight`, GPTQShard), so the model code stays unaware of the format.

Hook for serve/models/loader.py (data plane), two lines in `load_model`:
    quant = resolve_quant(path, quant)
    weights = adapt_weights(path, iter_weights(path, cfg))
`load_model_quantized` below is `load_model` with that hook, for callers that need it today.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from serve.layers.quant.gptq import GPTQShard

_GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def checkpoint_quant_config(path: str | Path) -> dict[str, Any] | None:
    """config.json's `quantization_config` of an HF directory; None for GGUF files and float models."""
    p = Path(path).expanduser()
    cfg = p / "config.json"
    if not p.is_dir() or not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("quantization_config")


def resolve_quant(path: str | Path, requested: str = "none") -> str:
    """The quant method to build the model with: the checkpoint's own format wins over "none";
    asking for a different scheme on a pre-quantized checkpoint is an error."""
    qcfg = checkpoint_quant_config(path)
    if qcfg is None:
        if requested == "gguf" and Path(path).suffix != ".gguf":
            raise ValueError("quantization='gguf' needs a .gguf checkpoint")
        return requested
    method = str(qcfg.get("quant_method", "")).lower()
    if method != "gptq":
        raise ValueError(f"checkpoint quant_method {method!r} is not supported by the native engine (gptq is)")
    if requested in ("none", "gptq", "gptq_reference"):
        return "gptq" if requested == "none" else requested
    raise ValueError(f"{path} is a GPTQ checkpoint; quantization={requested!r} cannot be applied on top of it")


def _shard(parts: dict[str, torch.Tensor], qcfg: dict[str, Any]) -> GPTQShard:
    fmt = str(qcfg.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"unsupported GPTQ checkpoint_format {fmt!r}")
    bits = int(qcfg["bits"])
    g_idx = parts.get("g_idx")
    k = parts["qweight"].shape[0] * 32 // bits
    group = int(qcfg.get("group_size", -1))
    if g_idx is None:  # some writers omit g_idx when desc_act is off
        g_idx = (torch.arange(k) // (k if group == -1 else group)).to(torch.int32)
    return GPTQShard(qweight=parts["qweight"], qzeros=parts["qzeros"], scales=parts["scales"], g_idx=g_idx,
                     bits=bits, group_size=group, zero_offset=1 if fmt == "gptq" else 0)


def gptq_weights(weights: Iterable[tuple[str, Any]], qcfg: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Regroup GPTQ tensors into one (`X.weight`, GPTQShard) per module; other tensors pass through."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        module, _, part = name.rpartition(".")
        if part not in _GPTQ_PARTS:
            yield name, tensor
            continue
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if len(parts) == len(_GPTQ_PARTS):
            yield f"{module}.weight", _shard(pending.pop(module), qcfg)
    for module, parts in pending.items():  # modules whose g_idx never came
        if not {"qweight", "qzeros", "scales"} <= parts.keys():
            raise ValueError(f"GPTQ module {module} lacks {sorted({'qweight', 'qzeros', 'scales'} - parts.keys())}")
        yield f"{module}.weight", _shard(parts, qcfg)


def adapt_weights(path: str | Path, weights: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    qcfg = checkpoint_quant_config(path)
    return weights if qcfg is None else gptq_weights(weights, qcfg)


def load_model_quantized(path: str | Path, dtype: str = "bfloat16", device: str | torch.device = "cpu",
                         attention_backend: str = "auto", quant: str = "none", max_positions: int | None = None,
                         block_size: int = 16) -> torch.nn.Module:
    """serve.models.loader.load_model, plus GPTQ checkpoints, quant methods chosen by the checkpoint,
    and quant="gguf" (a GGUF's Q4_0 / Q4_1 blocks into the int4 kernel)."""
    from serve.attention.base import get_backend
    from serve.models.loader import DTYPES, iter_weights, load_model_config
    from serve.models.registry import model_class

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    quant = resolve_quant(path, quant)
    cfg = load_model_config(path)
    dev = torch.device(device)
    backend = get_backend(attention_backend, dev, block_size)
    with dev:
        model = model_class(cfg.architecture)(cfg, backend, DTYPES[dtype], quant=quant, max_positions=max_positions)
    if quant == "gguf":
        from serve.layers.quant.gguf import gguf_int4_weights
        from serve.models.loader import resolve_checkpoint

        weights = gguf_int4_weights(resolve_checkpoint(path), cfg)
    else:
        weights = adapt_weights(path, iter_weights(path, cfg))
    with torch.no_grad():
        model.load_weights(weights)
    return model.eval()
