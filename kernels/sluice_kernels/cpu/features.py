"""What this CPU and OS really allow, read at run time (never assumed from the build machine).

Linux's /proc/cpuinfo lists an ISA extension only when the CPU has it *and* the kernel enabled its
register state (XCR0), so a flag listed there can be executed. AMX is the exception that needs more:
the process must ask for the tile state (arch_prctl), and some VMs list it yet fault on use, so AMX
is trusted only after `amx_probe.amx_usable()` ran it in a throwaway process.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    machine: str

    def has(self, *names: str) -> bool:
        return all(n in self.flags for n in names)


def parse_cpuinfo(text: str, machine: str = "x86_64") -> CpuInfo:
    """The first processor's model name and flags from /proc/cpuinfo text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model or platform.processor() or machine, flags=flags, machine=machine)


@functools.cache
def cpu_info() -> CpuInfo:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


# ISA levels our kernels and llama.cpp's variants are built for, each with the cpuinfo flags it needs.
AVX2 = ("avx2", "fma", "f16c", "bmi2")
AVX512 = AVX2 + ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
AVX512_VNNI = AVX512 + ("avx512_vnni",)
AVX512_BF16 = AVX512_VNNI + ("avx512vbmi", "avx512_bf16")
AMX = AVX512_BF16 + ("amx_tile", "amx_int8", "amx_bf16")
