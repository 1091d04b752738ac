"""The kernels compile ahead of time for a real NVIDIA target (sm_80: TTIR -> PTX -> cubin), no GPU needed.

The interpreter tests here prove the numbers; they do not prove the GPU build, because the
interpreter accepts code the compiler rejects. kernels/sluice_kernels/compile_check.py compiles the launchers'
configurations (fp16 decode / bf16 prefill / fp32 GEMM, decode and prefill attention) and checks
the 16-bit ones use tensor-core mma. It runs in a child process without TRITON_INTERPRET, since this
folder's process imported Triton for the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_kernels_compile_to_cubin_for_sm80(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # really compile, never reuse an earlier run's cubins
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated to silence its warning
    proc = subprocess.run([sys.executable, "-m", "sluice_kernels.compile_check", "--arch", "80", "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and all(line.endswith("bytes cubin)") and ": ok" in line for line in lines), proc.stdout
