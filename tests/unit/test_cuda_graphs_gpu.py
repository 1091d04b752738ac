"""Decode CUDA graphs on a real GPU: replay == eager logits at several batch sizes (bf16 and fp32), and
greedy generation with graphs == without. Needs CUDA; skipped here.

Runs tests/unit/cuda_graph_checks.py in a child process with TRITON_INTERPRET removed: when this file
shares a pytest run with tests/kernels, the Triton kernels in this process are the interpreter's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_decode_graph_replay_and_generation_equal_eager_on_cuda() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.unit.cuda_graph_checks"], env=env,
                          capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISMATCH" not in proc.stdout and proc.stdout.count(": ok") >= 16
