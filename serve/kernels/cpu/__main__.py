"""Build (or find cached) the CPU kernels now and print which path each op takes, and which CPU
variant of llama.cpp the llamacpp backend loads: `python -m serve.kernels.cpu`. `make install` runs it
so the first `sluice serve` does not spend ~20 s compiling."""

from __future__ import annotations

import sys

from sluice_kernels.cpu.__main__ import exit_code, report


def _print_llama_cpp() -> None:
    from serve.backends.llamacpp_build import is_built

    if not is_built():
        print("llama.cpp: not built (python -m serve.backends.llamacpp_build)")
        return
    from serve.backends.llamacpp_loader import pick_variant

    choice, path = pick_variant()
    print(f"llama.cpp CPU variant: {choice.name} ({choice.reason}): {path}")


if __name__ == "__main__":
    on = report()
    _print_llama_cpp()
    sys.exit(exit_code(on))
