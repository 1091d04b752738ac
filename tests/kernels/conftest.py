"""Run the Triton kernels on CPU through Triton's interpreter, for the tests in this folder only.

Triton decides interpreter vs compiler when a kernel is decorated (module import) and reads
TRITON_INTERPRET again while it runs, so: the kernel modules are (re)imported here with the variable
set, and an autouse fixture sets it around each test of this folder. The process environment is
restored at once, so other test folders in the same pytest run never see it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest

KERNEL_MODULES = ("serve.kernels.triton_gptq", "serve.kernels.triton_paged_attention")


def _import_interpreted() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in KERNEL_MODULES:
            module = sys.modules.get(name) or importlib.import_module(name)
            from serve.kernels.common import interpreting

            kernel = next(v for k, v in vars(module).items() if k.startswith("_") and k.endswith("_kernel"))
            if not interpreting(kernel):  # imported earlier in this run for a real GPU
                importlib.reload(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_interpreted()


@pytest.fixture(autouse=True)
def triton_interpreter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TRITON_INTERPRET=1 for CPU tests; GPU-marked tests compile for real in their own process."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
