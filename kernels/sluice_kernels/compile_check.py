"""Compile every kernel configuration the launchers choose for real NVIDIA targets, no GPU needed.

    python -m sluice_kernels.compile_check [--arch 80 90] [--quick]

Triton's wheel ships LLVM and ptxas, so `triton.compile` for a `GPUTarget` goes TTIR -> TTGIR -> PTX
-> cubin on a CPU-only machine. The interpreter accepts code the compiler rejects (and the reverse),
so this is the CPU-side proof that the GPU path builds; nothing is launched. Run it without
TRITON_INTERPRET: under the interpreter, triton's own library is not compilable. Prints one line
per configuration and exits 1 if any fails to build, or if a 16-bit one lacks a tensor-core (mma)
dot (fp32 uses exact "ieee" products, which are FMA loops by design).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sluice_kernels import triton_gptq, triton_paged_attention
from sluice_kernels.common import dot_config

PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def build(kernel: triton.runtime.JITFunction, runtime_types: list[str], constexprs: dict, target: GPUTarget) -> dict:
    """kernel's asm by stage ("ttir", "ptx", "cubin", ...) for the given argument types and constants."""
    sig = dict(zip(kernel.arg_names[:len(runtime_types)], runtime_types, strict=True))
    sig.update({k: "constexpr" for k in constexprs})
    return triton.compile(ASTSource(kernel, sig, constexprs), target=target).asm


def gptq_configs(quick: bool) -> Iterator[tuple[str, list[str], dict]]:
    for dtype in PTR:
        for m in ({torch.float16: (1,), torch.bfloat16: (256,), torch.float32: (32,)}[dtype] if quick else (1, 32, 256)):
            bm, bn, bk = triton_gptq._blocks(m)
            dot_dtype, precision = dot_config(dtype, interpreted=False)
            yield (f"gptq {str(dtype).split('.')[1]} m={m}", [PTR[dtype], "*i32", "*i32", "*fp16", "*i32", PTR[dtype]] + ["i32"] * 13,
                   {"ZERO_OFFSET": 1, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "DOT_PRECISION": precision,
                    "DOT_DTYPE": dot_dtype})


def attention_configs(quick: bool) -> Iterator[tuple[str, list[str], dict]]:
    shapes = ((1, 3, 64), (300, 3, 64), (1, 8, 128), (512, 1, 128))  # (max query len, group, head dim)
    for dtype in (torch.float16, torch.bfloat16):
        for max_q_len, group, head_dim in (shapes[:1] if dtype == torch.float16 else shapes[1:2]) if quick else shapes:
            block_q, g_pad, m_rows = triton_paged_attention.tile_config(max_q_len, group)
            dot_dtype, precision = dot_config(dtype, interpreted=False)
            yield (f"attention {str(dtype).split('.')[1]} q_len={max_q_len} g={group} d={head_dim}",
                   [PTR[dtype]] * 4 + ["*i32"] * 4 + ["fp32"] + ["i32"] * 14,
                   {"BLOCK_Q": block_q, "G_PAD": g_pad, "M_ROWS": m_rows, "BLOCK_N": 32, "BLOCK_D": head_dim,
                    "DOT_DTYPE": dot_dtype, "DOT_PRECISION": precision})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities")
    ap.add_argument("--quick", action="store_true", help="one configuration per dtype (the CPU test)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
        return 2
    failed = 0
    kernels = [(triton_gptq._gptq_gemm_kernel, gptq_configs(args.quick)),
               (triton_paged_attention._paged_attn_kernel, attention_configs(args.quick))]
    configs = [(k, c) for k, cs in kernels for c in cs]
    for arch in args.arch:
        for kernel, (label, types, constexprs) in configs:
            try:
                asm = build(kernel, types, constexprs, GPUTarget("cuda", arch, 32))
                ok = bool(asm["cubin"]) and ("mma" in asm["ptx"] or "float32" in label)
                print(f"sm_{arch} {label}: {'ok' if ok else 'NO MMA'} ({len(asm['cubin'])} bytes cubin)")
            except Exception as e:  # report every configuration, then fail
                ok = False
                print(f"sm_{arch} {label}: FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
