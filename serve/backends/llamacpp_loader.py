"""Import llama_cpp against the portable build and load the ggml CPU variant this machine allows.

The variant is chosen here, not by ggml's own scan, for two reasons: ggml scores a variant from
CPUID alone, so on a VM that lists AMX but faults on it ggml would pick the AMX build and crash; and
a choice made in Python can be logged, tested and overridden (SLUICE_LLAMA_CPU_VARIANT=haswell).
Loading one variant before llama_backend_init() makes llama.cpp skip its own scan.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sluice_kernels.cpu.features import AVX2, AVX512, CpuInfo, cpu_info

from serve.backends.llamacpp_build import install_dir, is_built

log = logging.getLogger("sluice.llamacpp")

_SSE = ("sse4_2",)
# ggml's x86 CPU variants, best first, with the cpuinfo flags their code is compiled to use
# (from the variant list in ggml's CMake files; ggml's AVX512 option means F/CD/VL/DQ/BW).
VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sapphirerapids", AVX512 + ("avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")),
    ("zen4", AVX512 + ("avx512vbmi", "avx512_vnni", "avx512_bf16")),
    ("cooperlake", AVX512 + ("avx512_vnni", "avx512_bf16")),
    ("icelake", AVX512 + ("avx512vbmi", "avx512_vnni")),
    ("cascadelake", AVX512 + ("avx512_vnni",)),
    ("cannonlake", AVX512 + ("avx512vbmi",)),
    ("skylakex", AVX512),
    ("alderlake", AVX2 + ("avx_vnni",)),
    ("haswell", _SSE + ("avx",) + AVX2),
    ("piledriver", _SSE + ("avx", "f16c", "fma")),
    ("ivybridge", _SSE + ("avx", "f16c")),
    ("sandybridge", _SSE + ("avx",)),
    ("sse42", _SSE),
    ("x64", ()),
)


@dataclass(frozen=True)
class VariantChoice:
    name: str
    reason: str


def choose_variant(info: CpuInfo, amx_ok: bool, built: set[str], forced: str | None = None) -> VariantChoice:
    """The best built variant whose instructions this CPU and OS allow; AMX only when the probe ran it."""
    if forced:
        if forced not in built:
            raise RuntimeError(f"SLUICE_LLAMA_CPU_VARIANT={forced} is not built (have: {', '.join(sorted(built))})")
        return VariantChoice(forced, "forced by SLUICE_LLAMA_CPU_VARIANT")
    for name, needs in VARIANTS:
        if name not in built or not info.has(*needs):
            continue
        if "amx_int8" in needs and not amx_ok:
            continue
        return VariantChoice(name, "best variant this CPU allows" + ("" if amx_ok or "amx_int8" not in info.flags
                                                                     else " (AMX listed but not usable)"))
    raise RuntimeError(f"no llama.cpp CPU variant runs on this CPU (built: {', '.join(sorted(built))})")


def built_variants(cpu_dir: Path) -> set[str]:
    return {p.name[len("libggml-cpu-"):-len(".so")] for p in cpu_dir.glob("libggml-cpu-*.so")}


def pick_variant(dest: Path | None = None) -> tuple[VariantChoice, Path]:
    from sluice_kernels.cpu.amx_probe import amx_usable

    cpu_dir = (dest or install_dir()) / "cpu"
    built = built_variants(cpu_dir)
    info = cpu_info()
    amx_ok = info.has("amx_int8") and amx_usable().usable
    choice = choose_variant(info, amx_ok, built, os.environ.get("SLUICE_LLAMA_CPU_VARIANT") or None)
    return choice, cpu_dir / f"libggml-cpu-{choice.name}.so"


@functools.cache
def load_llama_cpp() -> ModuleType:
    """llama_cpp, bound to the portable build with its CPU variant loaded (once per process)."""
    dest = install_dir()
    if not is_built(dest):
        raise RuntimeError("llama.cpp is not built for sluice: run `python -m serve.backends.llamacpp_build` "
                           "(`make install` does it; ~10 min once)")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(dest / "lib")
    import llama_cpp

    choice, path = pick_variant(dest)
    ggml = ctypes.CDLL(str(dest / "lib" / "libggml.so"))
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    if not ggml.ggml_backend_load(str(path).encode()):
        raise RuntimeError(f"ggml refused its CPU variant {path.name} on this machine")
    log.info("llama.cpp CPU variant: %s (%s)", choice.name, choice.reason)
    _LOADED.append(choice)
    return llama_cpp


_LOADED: list[VariantChoice] = []


def loaded_variant() -> VariantChoice | None:
    return _LOADED[0] if _LOADED else None
