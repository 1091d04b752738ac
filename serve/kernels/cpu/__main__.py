"""Build (or find cached) the CPU kernels now: `python -m serve.kernels.cpu`. `make install` runs it
so the first `sluice serve` does not spend ~20 s compiling."""

from __future__ import annotations

import sys

from serve.kernels import cpu

if __name__ == "__main__":
    ok = cpu.available()
    print(f"sluice CPU kernels: {'ready in ' + str(cpu.build_dir()) if ok else cpu.unavailable_reason() or 'build failed'}")
    sys.exit(0)  # unavailable kernels are not an error: the engine falls back to PyTorch's ops
