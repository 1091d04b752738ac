"""Make a Hugging Face safetensors directory from a GGUF file, offline, for peers that need one (vLLM).

transformers dequantizes the GGUF to f32 on load and then refuses `save_pretrained` because the model
still carries its GGUF quantizer marker; the weights are plain tensors by then, so the marker is cleared
before saving. The result has config.json, model.safetensors, tokenizer files and the chat template.

    python -m benchmarks.hf_export GGUF_FILE OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def export(gguf: Path, out: Path) -> Path:
    """Write the HF directory at `out` (skipped when a complete one is already there)."""
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # the tensors are already dequantized; only the marker blocks saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)  # only a finished export carries the final name
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.hf_export GGUF_FILE OUT_DIR", file=sys.stderr)
        return 2
    gguf, out = Path(argv[0]), Path(argv[1])
    if not gguf.is_file():
        print(f"error: {gguf} is not a file", file=sys.stderr)
        return 1
    print(export(gguf, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
