"""`sluice bench quality`: perplexity (sliding window) of one model variant over a held-out text, plus
its on-disk bytes and, on the native engine, single-stream decode tokens/s.

The text is tokenized once with `--tokenizer` (default: the model's own), so variants of one model
(bf16, GPTQ, RTN, int8, GGUF) are scored on exactly the same token ids; the result records a hash
of them so tables can be checked for that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.perplexity import perplexity

DEFAULT_TEXT = Path(__file__).parent / "data" / "kjv_genesis37-45_ruth.txt"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("quality", help="perplexity of a model variant over held-out text (sliding window)")
    p.add_argument("--model", required=True, help="HF dir, GPTQ dir, or .gguf file")
    p.add_argument("--engine", choices=("native", "transformers", "llamacpp"), default="native")
    p.add_argument("--quant", default="auto",
                   help="native: auto (the checkpoint's own format: GPTQ dir -> gptq, .gguf -> gguf int4, else "
                        "none) or a quant method (none, int8, gptq, gptq_reference, gguf, ...)")
    p.add_argument("--dtype", default="bfloat16", help="native activation/weight dtype")
    p.add_argument("--tokenizer", default=None, help="HF dir or .gguf whose tokenizer defines the token ids")
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="evaluation text file")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=0, help="use only the first N tokens (0: all)")
    p.add_argument("--decode-steps", type=int, default=0, help="native: also time N greedy decode steps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--label", default="")
    p.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    p.set_defaults(func=run)


def _tokens(tokenizer_path: str, text_path: str, max_tokens: int) -> list[int]:
    from serve.models.loader import load_tokenizer

    text = Path(text_path).read_text(encoding="utf-8")
    ids = list(load_tokenizer(tokenizer_path)(text, add_special_tokens=False)["input_ids"])
    return ids[:max_tokens] if max_tokens else ids


def measure(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks import quality_models

    if a.threads:
        torch.set_num_threads(a.threads)
    ids = _tokens(a.tokenizer or a.model, a.text, a.max_tokens)
    t0 = time.perf_counter()
    lm = quality_models.build(a.engine, a.model, a.context, a.dtype, a.quant)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = perplexity(lm.logits, ids, a.context, a.stride)
    out: dict[str, Any] = {
        "label": a.label or Path(a.model).name, "model": a.model, "engine": a.engine, "quant": a.quant,
        "dtype": a.dtype if a.engine == "native" else None, "text": Path(a.text).name,
        "tokens_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16], "tokens": len(ids),
        "context": a.context, "stride": a.stride, "perplexity": round(res.perplexity, 4),
        "tokens_scored": res.tokens_scored, "windows": res.windows,
        "file_bytes": quality_models.checkpoint_bytes(a.model), "load_s": round(load_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
    }
    if isinstance(lm, quality_models.NativeLM):
        out["quant"] = lm.quantization  # what "auto" resolved to
        out["weight_bytes_in_memory"] = lm.weight_bytes()
        if a.decode_steps:
            out["decode_tok_s"] = round(lm.decode_tokens_per_s(ids[:32], a.decode_steps), 2)
            out["decode_steps"] = a.decode_steps
    return out


def run(a: argparse.Namespace) -> int:
    try:
        out = measure(a)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    line = json.dumps(out)
    print(line)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return 0
