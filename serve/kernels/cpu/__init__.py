"""CPU kernels compiled on first use: AVX2 block-quantized linears (quant_linear.cpp), decode
attention from the paged KV cache (paged_decode_attention.cpp), and fused residual-add + RMSNorm and
SwiGLU for float32 activations (fused_pointwise.cpp).

`available()` compiles the extension once per source version (cached under ~/.cache/sluice/torch_ext,
~20 s the first time) and registers the `torch.ops.sluice_cpu.*` ops wrapped below.
It returns False, with the reason logged once, where the kernels cannot run: a CPU without AVX2/FMA/
F16C, no C++ compiler, or SLUICE_CPU_KERNELS=0. Callers then take their plain-PyTorch path.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_SOURCES = [str(Path(__file__).with_name(f)) for f in ("quant_linear.cpp", "paged_decode_attention.cpp",
                                                                   "fused_pointwise.cpp")]
_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-DNDEBUG"]


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unavailable_reason() -> str | None:
    """Why the kernels cannot be built or run here, or None if they can."""
    if os.environ.get("SLUICE_CPU_KERNELS", "1") == "0":
        return "disabled by SLUICE_CPU_KERNELS=0"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"no AVX2 kernels for {platform.machine()}"
    missing = {"avx2", "fma", "f16c"} - _cpu_flags()
    if missing:
        return f"CPU lacks {', '.join(sorted(missing))}"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (set CXX or install g++)"
    if not _ninja_on_path():
        return "no ninja build tool (pip install ninja)"
    return None


def _ninja_on_path() -> bool:
    """torch's extension builder runs `ninja` from PATH; the pinned PyPI package puts it in its own
    bin dir, which is not on PATH when the venv's python is run without activating the venv."""
    if shutil.which("ninja") is not None:
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def build_dir() -> Path:
    root = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))
    path = root / "torch_ext" / f"torch{torch.__version__.split('+')[0]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def available() -> bool:
    reason = unavailable_reason()
    if reason is None:
        try:
            from torch.utils.cpp_extension import load

            # torch recompiles when the source changes and reuses the cached library otherwise.
            load(name="sluice_cpu_kernels", sources=_SOURCES, extra_cflags=_FLAGS,
                 build_directory=str(build_dir()), is_python_module=False, verbose=False)
            return True
        except Exception as e:  # a failed build must leave the engine on its fallback path
            reason = f"build failed: {e}"
    log.warning("AVX2 quantized CPU kernels unavailable (%s); using PyTorch's matmuls", reason)
    return False


def q4_linear(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, n: int) -> torch.Tensor:
    """x [M, K] f32/bf16 -> [M, n]; qs, d, m: a Q4 weight interleaved 8 rows per group
    (serve.layers.quant.blocks.interleave); w = d * q + m."""
    return torch.ops.sluice_cpu.q4_linear(x, qs, d, m, n)


def q8_linear(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, n: int) -> torch.Tensor:
    """x [M, K] f32/bf16 -> [M, n]; qs, d: a Q8 weight interleaved 8 rows per group; w = d * q."""
    return torch.ops.sluice_cpu.q8_linear(x, qs, d, n)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                           lens: torch.Tensor, scale: float, k_new: torch.Tensor | None = None,
                           v_new: torch.Tensor | None = None, slots: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence. q [B, Hq, D]; caches [num_blocks, block_size, Hkv, D] (q's dtype,
    float32 or bfloat16); tables [B, max_blocks] int64; lens [B] int64 context lengths -> [B, Hq, D].
    With k_new, v_new [B, Hkv, D] and slots [B], the step's K/V rows are written to the cache first."""
    return torch.ops.sluice_cpu.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, k_new, v_new, slots)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [T, H] -> (weight * rmsnorm(x + residual), x + residual)."""
    return torch.ops.sluice_cpu.add_rms_norm(x, residual, weight, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """float32 [T, 2I] = [gate | up] -> silu(gate) * up."""
    return torch.ops.sluice_cpu.silu_and_mul(x)


def rotary_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """In place on float32 x [T, H, D] (strided rows allowed): x * cos + roll(x, D/2) * signed_sin."""
    return torch.ops.sluice_cpu.rotary_(x, cos, signed_sin)
