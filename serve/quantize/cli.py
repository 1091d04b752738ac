"""`sluice quantize [--format gptq|sluice] [--method gptq|rtn] [--bits 4] [--group-size G] [--sym|--asym]
[--act-order] MODEL_DIR OUT_DIR [--calib SOURCES]`.

MODEL_DIR is a Hugging Face safetensors directory of a Llama-architecture model (make one from a GGUF
with `sluice models convert GGUF DIR`). OUT_DIR receives a GPTQ checkpoint; with the defaults (format
gptq: symmetric, whole groups) vLLM loads it as well as our native engine (serve/quantize/formats.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from serve.quantize.calibration import DEFAULT_CALIB, LICENSES, PYDOC_TOPICS
from serve.quantize.formats import DEFAULT_FORMAT, DEFAULT_GROUP, FORMATS, VLLM_GROUPS

FORMAT_HELP = ("the reader the checkpoint is for. gptq (default): the AutoGPTQ layout; with the defaults vLLM "
               "(tested: tests/e2e/test_gptq_interop.py) and Sluice load it; symmetric by default, whole groups "
               "only. sluice: the layout before issue #13 (asymmetric by default, a ragged last group allowed); "
               "only Sluice loads it")
GROUP_HELP = (f"columns per scale group; -1: one group per row. Default: {DEFAULT_GROUP}, or for format gptq "
              f"the largest of {', '.join(map(str, VLLM_GROUPS))} dividing every quantized layer's in_features "
              "(logged and written to quantize_config.json); an explicit size that leaves a ragged group is refused")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("quantize", help="quantize an HF model directory to a GPTQ checkpoint (GPTQ or RTN)")
    p.add_argument("model_dir", help="HF safetensors directory (config.json + *.safetensors)")
    p.add_argument("out_dir", help="output directory for the GPTQ checkpoint")
    p.add_argument("--format", choices=FORMATS, default=DEFAULT_FORMAT, dest="fmt", help=FORMAT_HELP)
    p.add_argument("--method", choices=("gptq", "rtn"), default="gptq",
                   help="gptq (calibrated, error-compensating) or rtn (round to nearest, no calibration data)")
    p.add_argument("--bits", type=int, choices=(4, 8), default=4, help="vLLM's CPU build loads 4 bits only")
    p.add_argument("--group-size", type=int, default=None, help=GROUP_HELP)
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--sym", action="store_true", default=None,
                      help="symmetric grid, zero point fixed at 2^(bits-1) (the default for format gptq)")
    grid.add_argument("--asym", action="store_false", dest="sym",
                      help="asymmetric grid (a zero point per group; the default for format sluice): better "
                           "perplexity at the same group size (README: Quantization), but vLLM cannot load it")
    p.add_argument("--act-order", action="store_true",
                   help="GPTQ: quantize columns by decreasing Hessian diagonal (vLLM 0.32 loads it only with "
                        "--group-size -1)")
    p.add_argument("--calib", default=DEFAULT_CALIB,
                   help=f"calibration sources, comma-separated: {PYDOC_TOPICS} (Python's documentation topics), "
                        f"{LICENSES} (/usr/share/common-licenses), {DEFAULT_CALIB} (both; default), or text files")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--damp", type=float, default=0.01, help="Hessian dampening, fraction of mean(diag(H))")
    p.add_argument("--block-size", type=int, default=128, help="GPTQ lazy-update block (columns)")
    p.add_argument("--no-true-sequential", action="store_true",
                   help="GPTQ: one calibration pass per layer for all its linears (faster, slightly worse)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="dtype of the tensors left unquantized (embeddings, norms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.set_defaults(func=run)


def _check_args(a: argparse.Namespace) -> str | None:
    model_dir = Path(a.model_dir)
    if not (model_dir / "config.json").is_file():
        return f"{model_dir} is not an HF model directory (no config.json)"
    if json.loads((model_dir / "config.json").read_text()).get("quantization_config"):
        return f"{model_dir} is already quantized"
    if a.method == "rtn" and a.act_order:
        return "--act-order needs calibration data; it applies to --method gptq only"
    return None


def run(a: argparse.Namespace) -> int:
    err = _check_args(a)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from serve.quantize.driver import QuantizeJob, run_job

        job = QuantizeJob(model_dir=Path(a.model_dir), out_dir=Path(a.out_dir), method=a.method, bits=a.bits,
                          group_size=a.group_size, sym=a.sym, act_order=a.act_order, calib=a.calib,
                          nsamples=a.nsamples, seqlen=a.seqlen, damp=a.damp, block_size=a.block_size,
                          dtype=a.dtype, seed=a.seed, threads=a.threads,
                          true_sequential=not a.no_true_sequential, fmt=a.fmt)
        t0 = time.perf_counter()
        result = run_job(job)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = result.meta.spec
    print(json.dumps({"out_dir": str(result.out_dir), "format": a.fmt, "method": a.method, "bits": spec.bits,
                      "group_size": spec.group_size, "sym": spec.sym, "act_order": a.act_order,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0
