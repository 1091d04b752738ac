"""Build (or find cached) the CPU kernels now and print which path each op takes:
`python -m serve.kernels.cpu`. `make install` runs it so the first `sluice serve` does not spend ~20 s
compiling."""

from __future__ import annotations

import sys

from serve.kernels import cpu
from serve.kernels.cpu.amx_probe import amx_usable
from serve.kernels.cpu.features import cpu_info


def main() -> int:
    info = cpu_info()
    print(f"CPU: {info.model} ({info.machine})")
    print(f"ISA paths this CPU allows: {', '.join(p.name for p in cpu.supported_paths()) or 'none'}")
    amx = amx_usable()
    print(f"AMX: {'usable' if amx.usable else 'not used'} ({amx.reason})")
    if not cpu.available():
        print(f"sluice CPU kernels: off ({cpu.unavailable_reason() or 'build failed'}); PyTorch's ops are used")
        return 0  # unavailable kernels are not an error: the engine falls back to PyTorch's ops
    chosen = cpu.chosen_path()
    assert chosen is not None
    print(f"sluice CPU kernels: path {chosen.name}, built in {cpu.build_dir(chosen)}")
    for op, how in chosen.ops:
        print(f"  {op:<24} {chosen.name:<12} {how}")
    _print_llama_cpp()
    return 0


def _print_llama_cpp() -> None:
    from serve.backends.llamacpp_build import is_built

    if not is_built():
        print("llama.cpp: not built (python -m serve.backends.llamacpp_build)")
        return
    from serve.backends.llamacpp_loader import pick_variant

    choice, path = pick_variant()
    print(f"llama.cpp CPU variant: {choice.name} ({choice.reason}): {path}")


if __name__ == "__main__":
    sys.exit(main())
