"""Run many small tensor ops on one thread.

Quantization loops (GPTQ's column loop, per-group RTN, packing) are thousands of tiny ops; with
intra-op threads each one pays a fork/join, and on a busy 2-core machine that made them 10-16x
slower than a single thread. Large matmuls (calibration forwards) keep every thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
