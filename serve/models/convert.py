"""`sluice models convert GGUF OUT_DIR`: a Hugging Face-style safetensors directory from a GGUF file.

Writes config.json, generation_config.json, model.safetensors (HF tensor names and rotary layout;
GGUF tensors dequantized), tokenizer.json + tokenizer_config.json and the chat template, all offline.
transformers, vLLM and our own loader read the result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from serve.models.gguf_reader import GGUFModelFile
from serve.models.loader import DTYPES
from serve.models.tokenizer import load_tokenizer_from


def convert_gguf(gguf: str | Path, out_dir: str | Path, dtype: str = "float32", force: bool = False) -> Path:
    """Convert; the directory appears complete or not at all (written beside it, then renamed)."""
    from safetensors.torch import save_file

    src, out = Path(gguf), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if not src.is_file():
        raise ValueError(f"GGUF file {src} does not exist")
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} exists and is not empty (use --force to replace it)")
    f = GGUFModelFile(src)
    cfg = f.arch_config()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {name: w.to(DTYPES[dtype]).contiguous() for name, w in f.tensors(cfg) if name != "rope_freqs"}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    hf = {**cfg.to_hf_dict(), "torch_dtype": dtype}
    (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf["eos_token_id"]}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tok = load_tokenizer_from(src, f.chat_template())
    tok.save_pretrained(str(tmp))
    _portable_tokenizer_config(tmp, f.chat_template(), cfg.max_position_embeddings)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _portable_tokenizer_config(d: Path, template: str | None, max_len: int) -> None:
    """Make the tokenizer files readable by older transformers and by other engines: the generic fast
    tokenizer class, the chat template both inline and as chat_template.jinja, no load-time flags."""
    path = d / "tokenizer_config.json"
    tc = json.loads(path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["model_max_length"] = max_len
    for key in ("is_local", "local_files_only", "backend"):
        tc.pop(key, None)
    if template:
        tc["chat_template"] = template
        (d / "chat_template.jinja").write_text(template)
    path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
