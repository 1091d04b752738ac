"""Check, then time, the compiled Triton kernels on a CUDA GPU against their PyTorch baselines.

    python -m serve.kernels.gpu_bench [--quick]

Exits 1 if a kernel disagrees with its reference. Timings (triton.testing.do_bench, median ms) put
the GPTQ GEMM beside a dense fp16 matmul on the dequantized weight, and the paged-attention kernel
beside the torch_sdpa backend, at SmolLM2-135M-like shapes. Run it without TRITON_INTERPRET (the
gpu-marked test in tests/kernels does so in a subprocess); on a machine without CUDA it exits 2.
"""

from __future__ import annotations

import argparse
import sys

import torch


def _gptq_case(n: int, k: int, group: int, dev: torch.device):
    from serve.quantize.packing import pack_qweight, pack_qzeros

    groups = (k + group - 1) // group
    codes = torch.randint(0, 16, (n, k))
    zeros = torch.randint(1, 16, (groups, n))
    scales = (torch.rand(groups, n) * 0.05 + 0.005).half()
    g_idx = (torch.arange(k) // group).to(torch.int32)
    return [t.to(dev) for t in (pack_qweight(codes, 4), pack_qzeros(zeros, 4), scales, g_idx)]


def check_gptq(m: int, n: int, k: int, dtype: torch.dtype, dev: torch.device, time_it: bool) -> bool:
    from sluice_kernels.triton_gptq import gptq_matmul

    from serve.quantize.dequant import dequantize_gptq

    qw, qz, sc, gi = _gptq_case(n, k, 64, dev)  # SmolLM2's hidden 576 = 9 groups of 64
    w = dequantize_gptq(qw.cpu(), qz.cpu(), sc.cpu(), gi.cpu(), 4).to(dev, dtype)  # [N, K]
    x = torch.randn(m, k, device=dev, dtype=dtype)
    y, ref = gptq_matmul(x, qw, qz, sc, gi), (x.float() @ w.float().T)
    ok = float((y.float() - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
    line = f"gptq m={m} n={n} k={k} {dtype}: {'ok' if ok else 'MISMATCH'}"
    if time_it:
        from triton.testing import do_bench

        line += (f"  triton {do_bench(lambda: gptq_matmul(x, qw, qz, sc, gi)):.4f} ms"
                 f"  dense {do_bench(lambda: x @ w.T):.4f} ms")
    print(line)
    return ok


def check_attention(num_seqs: int, ctx_len: int, q_len: int, dtype: torch.dtype, dev: torch.device,
                    time_it: bool) -> bool:
    from serve.attention.base import get_backend
    from serve.worker.forward_context import build_context

    bs, hq, hkv, d = 16, 9, 3, 64
    per_seq = (ctx_len + bs - 1) // bs
    blocks = torch.randperm(num_seqs * per_seq).tolist()
    tables = [blocks[i * per_seq:(i + 1) * per_seq] for i in range(num_seqs)]
    ctx = build_context([q_len] * num_seqs, [ctx_len - q_len] * num_seqs, tables, bs, dev)
    t = num_seqs * q_len
    cache = [torch.randn(num_seqs * per_seq, bs, hkv, d, device=dev, dtype=dtype) for _ in range(2)]
    q, k, v = (torch.randn(t, h, d, device=dev, dtype=dtype) for h in (hq, hkv, hkv))
    outs, fns = {}, {}
    for name in ("triton", "torch_sdpa"):
        backend = get_backend(name, dev, bs)
        meta = backend.prepare(ctx)
        kc, vc = cache[0].clone(), cache[1].clone()
        fns[name] = lambda b=backend, m=meta, kc=kc, vc=vc: b.forward(q, k, v, kc, vc, m, d ** -0.5)
        outs[name] = fns[name]()
    ref = outs["torch_sdpa"].float()
    ok = float((outs["triton"].float() - ref).abs().max()) <= 2e-2 * float(ref.abs().max())
    line = f"attention seqs={num_seqs} ctx={ctx_len} q_len={q_len} {dtype}: {'ok' if ok else 'MISMATCH'}"
    if time_it:
        from triton.testing import do_bench

        line += "".join(f"  {name} {do_bench(fn):.4f} ms" for name, fn in fns.items())
    print(line)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="correctness only, small shapes, no timing")
    ap.add_argument("--device", default="cuda", help="cpu: smoke-test this script under TRITON_INTERPRET=1")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the CPU coverage is tests/kernels under TRITON_INTERPRET=1)")
        return 2
    dev, time_it = torch.device(args.device), not args.quick and args.device == "cuda"
    torch.manual_seed(0)
    results = []
    for dtype in (torch.float16, torch.bfloat16):
        for m in (1, 32) if args.quick else (1, 8, 32, 256):
            results.append(check_gptq(m, 1536, 576, dtype, dev, time_it))
        for seqs, ctx_len, q_len in ((4, 100, 1), (2, 70, 33)) if args.quick else ((32, 512, 1), (1, 1024, 512)):
            results.append(check_attention(seqs, ctx_len, q_len, dtype, dev, time_it))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
