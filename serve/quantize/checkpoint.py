"""Write a quantized model as a standard GPTQ checkpoint directory.

Every quantized linear `X.weight` is replaced by `X.qweight / X.qzeros / X.scales / X.g_idx`; every
other tensor (embeddings, norms, an untied lm_head) is kept, cast to `dtype` (float16 by default, as
GPTQ checkpoints are). config.json gains `quantization_config`; tokenizer and template files are copied.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serve.quantize.grid import QuantizedWeight, QuantSpec
from serve.quantize.packing import to_checkpoint
from serve.quantize.threads import single_thread

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class CheckpointMeta:
    spec: QuantSpec
    method: str  # "gptq" | "rtn": how the codes were chosen; the format is GPTQ either way
    act_order: bool
    damp_percent: float
    dtype: str = "float16"
    true_sequential: bool = True
    fmt: str = "gptq"  # the reader it was written for (serve/quantize/formats.py)
    group_note: str | None = None  # why group_size is not the default, when it is not


def _sluice_block(meta: CheckpointMeta) -> dict[str, Any]:
    """Our own keys, kept in one block that the readers dispatching on the standard keys ignore."""
    block: dict[str, Any] = {"format": meta.fmt}
    if meta.group_note:
        block["group_size_note"] = meta.group_note
    return block


def quantization_config(meta: CheckpointMeta) -> dict[str, Any]:
    """The `quantization_config` block readers dispatch on (vLLM, transformers/optimum, GPTQModel)."""
    return {
        "quant_method": "gptq", "bits": meta.spec.bits, "group_size": meta.spec.group_size,
        "desc_act": meta.act_order, "sym": meta.spec.sym, "damp_percent": meta.damp_percent,
        "true_sequential": meta.true_sequential, "static_groups": False, "lm_head": False,
        "checkpoint_format": "gptq",  # v1 zero points (zero - 1)
        "quantizer": [f"sluice-{meta.method}"], "sluice": _sluice_block(meta),
    }


def _read_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def build_tensors(state: dict[str, torch.Tensor], quantized: dict[str, QuantizedWeight], bits: int,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Original tensors with each quantized module's `.weight` swapped for its four GPTQ tensors."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in quantized:
            for suffix, packed in to_checkpoint(quantized[module], bits).items():
                out[f"{module}.{suffix}"] = packed
        else:
            out[name] = t.to(dtype) if t.is_floating_point() else t
    missing = set(quantized) - {n.rsplit(".", 1)[0] for n in out if n.endswith(".qweight")}
    if missing:
        raise ValueError(f"quantized modules not found in the checkpoint: {sorted(missing)[:3]}")
    return out


def write_checkpoint(model_dir: Path, out_dir: Path, quantized: dict[str, QuantizedWeight],
                     meta: CheckpointMeta) -> Path:
    """Write out_dir/{model.safetensors, config.json, quantize_config.json, tokenizer files}."""
    config = json.loads((model_dir / "config.json").read_text())
    return write_checkpoint_from(_read_state(model_dir), config, out_dir, quantized, meta, files_from=model_dir)


def write_checkpoint_from(state: dict[str, torch.Tensor], config: dict[str, Any], out_dir: Path,
                          quantized: dict[str, QuantizedWeight], meta: CheckpointMeta,
                          files_from: Path | None = None) -> Path:
    """Same, from an in-memory state dict and config (a tied lm_head copy is dropped)."""
    from safetensors.torch import save_file

    if config.get("tie_word_embeddings"):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    with single_thread():
        tensors = build_tensors(state, quantized, meta.spec.bits, DTYPES[meta.dtype])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    qcfg = quantization_config(meta)
    config = {**config, "quantization_config": qcfg, "torch_dtype": meta.dtype, "dtype": meta.dtype}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "quantize_config.json").write_text(json.dumps(qcfg, indent=2) + "\n")
    for name in TOKENIZER_FILES if files_from else ():
        if (files_from / name).is_file():
            shutil.copy2(files_from / name, out_dir / name)
    return out_dir
