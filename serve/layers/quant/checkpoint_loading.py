"""Which quant method a checkpoint is served with, and its weight stream in the form that method takes.

The model's `load_weights` consumes (HF name, tensor) pairs with float `X.weight` tensors. A GPTQ
checkpoint instead holds `X.qweight / X.qzeros / X.scales / X.g_idx`; `gptq_weights` gathers those
four per module and yields (`X.weight`, GPTQShard), so the model code stays unaware of the format.

`serve.models.loader.load_model` calls `resolve_quant` (the `quantization` option: "auto" or a
registered method name) and `adapt_weights` / `gguf_int4_weights` for the weight stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from serve.layers.quant.gptq import GPTQShard

_GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
AUTO = "auto"
GPTQ_METHODS = ("gptq", "gptq_reference")  # the methods that read a GPTQ checkpoint's packed tensors


def checkpoint_quant_config(path: str | Path) -> dict[str, Any] | None:
    """config.json's `quantization_config` of an HF directory; None for GGUF files and float models."""
    p = Path(path).expanduser()
    cfg = p / "config.json"
    if not p.is_dir() or not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("quantization_config")


def checkpoint_format(path: str | Path) -> str | None:
    """"gptq" (HF dir with a GPTQ quantization_config), "gguf" (a .gguf file, or a dir holding one),
    or None (a float HF directory). Other quantized HF formats are an error: we cannot serve them."""
    from serve.models.loader import resolve_checkpoint

    p = resolve_checkpoint(path)
    if p.is_file():
        return "gguf"
    qcfg = checkpoint_quant_config(p)
    if qcfg is None:
        return None
    method = str(qcfg.get("quant_method", "")).lower()
    if method != "gptq":
        raise ValueError(f"checkpoint quant_method {method!r} is not supported by the native engine (gptq is)")
    return "gptq"


def auto_quant(fmt: str | None, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str:
    """What quantization="auto" means for a checkpoint of format `fmt` (see `checkpoint_format`) on
    `device` with activations of `dtype`: its own format (GPTQ -> int4 kernel, GGUF -> its Q4/Q8
    blocks), else float.

    Exception: a GGUF file on a CPU running float32 activations where the AVX2 block kernels cannot
    run (kernels/sluice_kernels/cpu: no AVX2, no compiler) goes to per-channel int8 weights with bf16
    activations at the matmul (`int8_bf16act`): torch's own int4 kernel with float32 activations is
    13x slower than with bf16 (1.78 vs 0.14 ms for [1, 576] x [576, 3072] on an AVX2-only CPU)."""
    if fmt == "gguf" and device is not None and device.type == "cpu" and dtype == torch.float32:
        from sluice_kernels import cpu

        return "gguf" if cpu.available() else "int8_bf16act"
    return fmt or "none"


def _check_registered(name: str) -> None:
    from serve.layers.quant.base import get_quant_method

    try:
        get_quant_method(name)
    except ValueError as e:
        raise ValueError(f"{e} (or {AUTO!r}: the checkpoint's own format)") from None


def resolve_quant(path: str | Path, requested: str = AUTO, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> str:
    """The quant method to build the model with. "auto": `auto_quant`. An explicit method must be
    registered and must fit the checkpoint: GPTQ checkpoints take only the GPTQ methods, "gguf" needs
    a GGUF file; float methods (none, int8, ...) take float or GGUF weights."""
    fmt = checkpoint_format(path)
    if requested == AUTO:
        return auto_quant(fmt, device, dtype)
    _check_registered(requested)
    if fmt == "gptq" and requested not in GPTQ_METHODS:
        raise ValueError(f"{path} is a GPTQ checkpoint; quantization={requested!r} cannot be applied on top of it "
                         f"(use {AUTO!r} or one of: {', '.join(GPTQ_METHODS)})")
    if fmt != "gptq" and requested in GPTQ_METHODS:
        raise ValueError(f"quantization={requested!r} needs a GPTQ checkpoint (an HF dir whose config.json has "
                         f"quantization_config.quant_method 'gptq'); {path} is not one")
    if requested == "gguf" and fmt != "gguf":
        raise ValueError(f"quantization='gguf' needs a .gguf checkpoint; {path} is not one")
    return requested


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
