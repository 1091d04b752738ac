"""The kernels compiled for a real GPU (no interpreter) == their references. Needs CUDA; skipped here.

Runs serve/kernels/gpu_bench.py --quick in a child process with TRITON_INTERPRET removed, so the
kernel modules are decorated for the compiler, whatever this process imported under the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_compiled_kernels_match_references_on_cuda() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "serve.kernels.gpu_bench", "--quick"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISMATCH" not in proc.stdout and proc.stdout.count("ok") >= 8
