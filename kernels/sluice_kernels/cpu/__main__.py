"""`python -m sluice_kernels.cpu`: build (or find cached) the CPU kernels and print the path per op."""

from __future__ import annotations

import sys

from sluice_kernels import cpu
from sluice_kernels.cpu.amx_probe import amx_usable
from sluice_kernels.cpu.features import cpu_info


def report() -> bool:
    """Print the CPU, the ISA paths it allows and the path each op takes; False if the kernels are off."""
    info = cpu_info()
    print(f"CPU: {info.model} ({info.machine})")
    print(f"ISA paths this CPU allows: {', '.join(p.name for p in cpu.supported_paths()) or 'none'}")
    amx = amx_usable()
    print(f"AMX: {'usable' if amx.usable else 'not used'} ({amx.reason})")
    try:
        on = cpu.available()
    except RuntimeError as e:  # required but unavailable
        print(f"sluice CPU kernels: off, and required: {e}")
        return False
    if not on:
        print(f"sluice CPU kernels: off ({cpu.unavailable_reason() or 'build failed'}); PyTorch's ops are used")
        return False
    chosen = cpu.chosen_path()
    assert chosen is not None
    print(f"sluice CPU kernels: path {chosen.name}, built in {cpu.build_dir(chosen)}")
    for op, how in chosen.ops:
        print(f"  {op:<24} {chosen.name:<12} {how}")
    return True


def exit_code(on: bool) -> int:
    """Unavailable kernels are not an error (the engine falls back to PyTorch's ops) unless
    SLUICE_REQUIRE names them; then `make install` stops here."""
    return 0 if on or not cpu.required() else 1


if __name__ == "__main__":
    sys.exit(exit_code(report()))
