"""CPU kernels compiled on first use, one build per ISA path, the path chosen at run time.

Sources: block-quantized linears (quant_linear.cpp), decode attention from the paged KV cache
(paged_decode_attention.cpp), fused residual-add + RMSNorm, SwiGLU and RoPE (fused_pointwise.cpp).
Each path in `PATHS` compiles them with its own -m flags into its own op namespace
(torch.ops.sluice_cpu_<path>), so the build never assumes the build machine's CPU: `choose_path()`
picks the best path this CPU and OS allow (cpuinfo flags; SLUICE_CPU_ISA forces one), and the tests
run every path the machine supports against the same reference.

`available()` compiles the chosen path once per source version (cached under
~/.cache/sluice/torch_ext, ~20 s the first time) and returns False, with the reason logged once,
where no path can run: a CPU without AVX2/FMA/F16C, no C++ compiler, or SLUICE_CPU_KERNELS=0.
Callers then take their plain-PyTorch path; with SLUICE_REQUIRE=kernels it raises instead. `python -m serve.kernels.cpu` prints the choice per op.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sluice_kernels.cpu.features import AVX2, AVX512_VNNI, cpu_info

log = logging.getLogger(__name__)
_SOURCES = [str(Path(__file__).with_name(f)) for f in ("quant_linear.cpp", "paged_decode_attention.cpp",
                                                                   "fused_pointwise.cpp")]
_BASE_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-mbmi2", "-fopenmp", "-DNDEBUG"]


@dataclass(frozen=True)
class IsaPath:
    name: str
    needs: tuple[str, ...]  # cpuinfo flags
    cflags: tuple[str, ...]
    # what each op does differently on this path (printed by `python -m serve.kernels.cpu`)
    ops: tuple[tuple[str, str], ...]

    @property
    def namespace(self) -> str:
        return f"sluice_cpu_{self.name}"


_AVX2_OPS = (("q4_linear", "AVX2 maddubs, 8 rows per 256-bit vector, 4-token tiles"),
             ("q8_linear", "AVX2 maddubs, 8 rows per 256-bit vector, 4-token tiles"),
             ("paged_decode_attention", "AVX2 FMA, 8 K rows per reduction"), ("add_rms_norm", "AVX2 (compiler)"),
             ("silu_and_mul", "AVX2 (compiler)"), ("rotary_", "AVX2 (compiler)"))
# Best first.
PATHS = (
    IsaPath("avx512_vnni", AVX512_VNNI,
            ("-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx512vnni"),
            (("q4_linear", "AVX-512 VNNI vpdpbusd; 2+ tokens: 16 rows per 512-bit vector, 8-token tiles"),
             ("q8_linear", "AVX-512 VNNI vpdpbusd; 2+ tokens: 16 rows per 512-bit vector, 8-token tiles"),
             ("paged_decode_attention", "AVX2 FMA, 8 K rows per reduction"), ("add_rms_norm", "AVX-512 (compiler)"),
             ("silu_and_mul", "AVX-512 (compiler)"), ("rotary_", "AVX-512 (compiler)"))),
    IsaPath("avx2", AVX2, (), _AVX2_OPS),
)


def _path(name: str) -> IsaPath:
    for p in PATHS:
        if p.name == name:
            return p
    raise ValueError(f"unknown CPU kernel path {name!r}; known: {', '.join(p.name for p in PATHS)}")


def supported_paths() -> list[IsaPath]:
    """Every path this CPU and OS can run, best first."""
    info = cpu_info()
    if info.machine not in ("x86_64", "AMD64"):
        return []
    return [p for p in PATHS if info.has(*p.needs)]


def choose_path() -> IsaPath | None:
    forced = os.environ.get("SLUICE_CPU_ISA")
    paths = supported_paths()
    if forced:
        chosen = _path(forced)
        if chosen not in paths:
            raise RuntimeError(f"SLUICE_CPU_ISA={forced}: this CPU lacks {', '.join(set(chosen.needs) - cpu_info().flags)}")
        return chosen
    return paths[0] if paths else None


def unavailable_reason() -> str | None:
    """Why the kernels cannot be built or run here, or None if they can."""
    if os.environ.get("SLUICE_CPU_KERNELS", "1") == "0":
        return "disabled by SLUICE_CPU_KERNELS=0"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"no CPU kernels for {platform.machine()}"
    missing = set(AVX2) - cpu_info().flags
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


def build_dir(path: IsaPath | None = None) -> Path:
    root = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))
    sub = path.name if path else ""
    out = root / "torch_ext" / f"torch{torch.__version__.split('+')[0]}" / sub
    out.mkdir(parents=True, exist_ok=True)
    return out


@functools.cache
def load_path(name: str) -> Any:
    """Build (or reuse) one ISA path and return its op namespace, torch.ops.sluice_cpu_<name>."""
    from torch.utils.cpp_extension import load

    path = _path(name)
    # torch rebuilds when the sources or flags change; headers are not tracked, so their hash is a flag.
    headers = hashlib.sha256(b"".join(h.read_bytes() for h in sorted(Path(__file__).parent.glob("*.h"))))
    flags = [*_BASE_FLAGS, *path.cflags, f"-DSLUICE_OPS_NS={path.namespace}",
             f"-DSLUICE_HEADERS={headers.hexdigest()[:16]}"]
    # torch recompiles when the sources or flags change and reuses the cached library otherwise.
    load(name=f"sluice_cpu_kernels_{path.name}", sources=_SOURCES, extra_cflags=flags,
         extra_include_paths=[str(Path(__file__).parent)], build_directory=str(build_dir(path)),
         is_python_module=False, verbose=False)
    return getattr(torch.ops, path.namespace)


@functools.cache
def available() -> bool:
    reason = unavailable_reason()
    if reason is None:
        try:
            chosen = choose_path()
            if chosen is None:
                raise RuntimeError("no ISA path fits this CPU")
            _OPS.append(load_path(chosen.name))
            _CHOSEN.append(chosen)
            return True
        except Exception as e:  # a failed build must leave the engine on its fallback path
            reason = f"build failed: {e}"
    if required():
        raise RuntimeError(f"sluice CPU kernels are required (SLUICE_REQUIRE={os.environ['SLUICE_REQUIRE']}) "
                           f"but unavailable: {reason}")
    log.warning("sluice CPU kernels unavailable (%s): every op falls back to PyTorch, several times slower "
                "(`python -m serve.kernels.cpu` says why; SLUICE_REQUIRE=kernels makes this an error)", reason)
    return False


def required() -> bool:
    """SLUICE_REQUIRE (a comma list, e.g. `kernels,vllm`, or `all`) names the kernels: a machine where
    they cannot run must refuse to serve rather than quietly take the slow fallback."""
    wanted = {w.strip() for w in os.environ.get("SLUICE_REQUIRE", "").split(",")}
    return bool(wanted & {"kernels", "all"})


_OPS: list[Any] = []
_CHOSEN: list[IsaPath] = []


def ops() -> Any:
    """The op namespace of the chosen path (call `available()` first)."""
    if not _OPS and not available():
        raise RuntimeError(f"CPU kernels unavailable: {unavailable_reason() or 'build failed'}")
    return _OPS[0]


def chosen_path() -> IsaPath | None:
    return _CHOSEN[0] if _CHOSEN else None


def q4_linear(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, n: int) -> torch.Tensor:
    """x [M, K] f32/bf16 -> [M, n]; qs, d, m: a Q4 weight interleaved 8 rows per group
    (serve.layers.quant.blocks.interleave); w = d * q + m."""
    return ops().q4_linear(x, qs, d, m, n)


def q8_linear(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, n: int) -> torch.Tensor:
    """x [M, K] f32/bf16 -> [M, n]; qs, d: a Q8 weight interleaved 8 rows per group; w = d * q."""
    return ops().q8_linear(x, qs, d, n)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                           lens: torch.Tensor, scale: float, k_new: torch.Tensor | None = None,
                           v_new: torch.Tensor | None = None, slots: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence. q [B, Hq, D]; caches [num_blocks, block_size, Hkv, D] (q's dtype,
    float32 or bfloat16); tables [B, max_blocks] int64; lens [B] int64 context lengths -> [B, Hq, D].
    With k_new, v_new [B, Hkv, D] and slots [B], the step's K/V rows are written to the cache first."""
    return ops().paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, k_new, v_new, slots)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [T, H] -> (weight * rmsnorm(x + residual), x + residual)."""
    return ops().add_rms_norm(x, residual, weight, eps)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """float32 [T, 2I] = [gate | up] -> silu(gate) * up."""
    return ops().silu_and_mul(x)


def rotary_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """In place on float32 x [T, H, D] (strided rows allowed): x * cos + roll(x, D/2) * signed_sin."""
    return ops().rotary_(x, cos, signed_sin)
