"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from tests.requirements import require


@pytest.fixture(params=["avx2-blocks", "torch-int4"])
def cpu_int4_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a GPTQ test through each CPU int4 kernel: the AVX2 block kernel (int8 activations; the tied
    head then runs as Q8_0 blocks) and torch's int4 kernel (exact float activations, float head).
    Yields the kernel's name."""
    from sluice_kernels import cpu

    from serve.layers.quant import gptq, q8_0

    if request.param == "avx2-blocks":
        require("kernels", cpu.unavailable_reason())
    else:
        monkeypatch.setattr(gptq, "_block_kernels", lambda: False)
        monkeypatch.setattr(q8_0, "block_kernels_here", lambda: False)
    return request.param


def _isa_ids() -> list[str]:
    from sluice_kernels import cpu

    return [p.name for p in cpu.PATHS]


@pytest.fixture(params=_isa_ids())
def isa_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a CPU-kernel test once per ISA path (sluice_kernels.cpu.PATHS): the path's build is what
    `cpu.ops()` returns for the test. Paths this CPU cannot run are skipped with what it lacks."""
    from sluice_kernels import cpu
    from sluice_kernels.cpu.features import cpu_info

    path = next(p for p in cpu.PATHS if p.name == request.param)
    if cpu.unavailable_reason() is not None:
        require("kernels", cpu.unavailable_reason())
    if path not in cpu.supported_paths():
        pytest.skip(f"{path.name} path: this CPU lacks {', '.join(sorted(set(path.needs) - cpu_info().flags))}")
    ops = cpu.load_path(path.name)
    monkeypatch.setattr(cpu, "ops", lambda: ops)
    return path.name
