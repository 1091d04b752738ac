"""Run the Triton kernels on CPU through Triton's interpreter, for the tests in this folder only.

Triton picks interpreter vs compiler when a function is decorated (for its own standard library,
when triton.language is first imported) and reads TRITON_INTERPRET again while a kernel runs. So:
triton and the kernel modules are imported here with the variable set (if something earlier in
this pytest run imported triton for the compiler, those modules are dropped and imported afresh;
its C extension is kept), and an autouse fixture sets the variable around each test of this folder.
The process environment is restored at once, so other test folders never see it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest

KERNEL_MODULES = ("sluice_kernels.common", "sluice_kernels.triton_gptq", "sluice_kernels.triton_paged_attention")


def _triton_is_interpreted() -> bool:
    import triton
    import triton.language as tl

    return not isinstance(tl.standard.sum, triton.runtime.JITFunction)


def _import_interpreted() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        if "triton" in sys.modules and not _triton_is_interpreted():
            stale = [m for m in sys.modules if m.split(".")[0] == "triton" and not m.startswith("triton._C")]
            for name in stale + [m for m in KERNEL_MODULES if m in sys.modules]:
                del sys.modules[name]
        for name in KERNEL_MODULES:
            importlib.import_module(name)
        assert _triton_is_interpreted()
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
