"""Run-time choice of CPU code paths: the cpuinfo parser, the AMX probe (which must survive a probe
that dies with SIGILL) and the choice of llama.cpp's CPU variant on each CPU type seen so far."""

from __future__ import annotations

import signal
import sys

import pytest
from sluice_kernels.cpu import amx_probe
from sluice_kernels.cpu.features import CpuInfo, cpu_info, parse_cpuinfo

from serve.backends.llamacpp_loader import VARIANTS, choose_variant
from tests.requirements import require

_BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 popcnt"
_AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw"
# The three machine types seen so far, by their cpuinfo flags (abridged to what matters here).
EPYC_AVX2 = f"{_BASE} sha_ni"
EPYC_AVX512 = f"{_BASE} {_AVX512} avx512vbmi avx512_vnni avx512_bf16 avx_vnni"
XEON_AMX = f"{EPYC_AVX512} avx512_fp16 amx_tile amx_int8 amx_bf16"
ALL_BUILT = {name for name, _ in VARIANTS}


def _cpu(flags: str) -> CpuInfo:
    return parse_cpuinfo(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                         "model name\t: other\nflags\t\t: sse\n")


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    info = _cpu("avx2 fma")
    assert info.model == "Test CPU" and info.flags == {"avx2", "fma"}
    assert info.has("avx2") and not info.has("avx2", "avx512f")


def test_this_machine_reports_its_flags() -> None:
    info = cpu_info()
    if info.machine != "x86_64":
        pytest.skip(f"x86 flags only: this is {info.machine}")
    assert "sse2" in info.flags and info.model


@pytest.mark.parametrize(("flags", "amx_ok", "expected"), [
    (EPYC_AVX2, False, "haswell"),
    (EPYC_AVX512, False, "zen4"),
    (XEON_AMX, False, "zen4"),  # AMX listed but the probe failed: never the AMX build
    (XEON_AMX, True, "sapphirerapids"),
    ("sse2", False, "x64"),
])
def test_variant_for_each_cpu_type(flags: str, amx_ok: bool, expected: str) -> None:
    assert choose_variant(_cpu(flags), amx_ok, ALL_BUILT).name == expected


def test_amx_listed_but_unusable_is_said() -> None:
    assert "AMX" in choose_variant(_cpu(XEON_AMX), False, ALL_BUILT).reason


def test_variant_not_built_falls_to_the_next_that_runs() -> None:
    assert choose_variant(_cpu(EPYC_AVX512), False, ALL_BUILT - {"zen4"}).name == "cooperlake"
    assert choose_variant(_cpu(EPYC_AVX2), False, {"x64", "zen4"}).name == "x64"


def test_forced_variant_must_be_built() -> None:
    assert choose_variant(_cpu(EPYC_AVX2), False, ALL_BUILT, forced="x64").name == "x64"
    with pytest.raises(RuntimeError, match="not built"):
        choose_variant(_cpu(EPYC_AVX2), False, {"x64"}, forced="haswell")


def test_no_variant_that_runs_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no llama.cpp CPU variant"):
        choose_variant(_cpu(EPYC_AVX2), False, {"zen4", "skylakex"})


def test_probe_that_dies_with_sigill_means_unusable() -> None:
    """The fault the Firecracker VM showed, reproduced by a child that raises SIGILL itself."""
    code = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    verdict = amx_probe.run_probe([sys.executable, "-c", code])
    assert not verdict.usable and "SIGILL" in verdict.reason


def test_probe_exit_codes() -> None:
    assert amx_probe.interpret(0, "ok").usable
    refused = amx_probe.interpret(3, "arch_prctl(ARCH_REQ_XCOMP_PERM) refused")
    assert not refused.usable and "arch_prctl" in refused.reason
    assert "SIGSEGV" in amx_probe.interpret(-signal.SIGSEGV, "").reason


def test_probe_timeout_means_unusable() -> None:
    verdict = amx_probe.run_probe([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert not verdict.usable and "timed out" in verdict.reason


def test_cpu_without_amx_is_not_probed() -> None:
    verdict = amx_probe.probe(_cpu(EPYC_AVX512))
    assert not verdict.usable and "does not list amx_tile" in verdict.reason


def test_amx_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_AMX", "0")
    amx_probe.amx_usable.cache_clear()
    try:
        assert amx_probe.amx_usable().reason == "disabled by SLUICE_AMX=0"
    finally:
        amx_probe.amx_usable.cache_clear()


def test_real_probe_on_this_machine() -> None:
    """Where the CPU lists AMX, the compiled probe runs and its verdict is whatever this machine allows
    (usable, or a reason); where it does not, the probe is compiled and must be refused by the kernel."""
    info = cpu_info()
    if info.machine != "x86_64":
        pytest.skip(f"no AMX on {info.machine}")
    verdict = amx_probe.probe(info)
    if info.has("amx_tile", "amx_int8"):
        assert verdict.usable or verdict.reason.startswith("probe")
        return
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        cmd = amx_probe._compile(Path(tmp))
        if isinstance(cmd, amx_probe.AmxVerdict):
            require("kernels", f"cannot compile the AMX probe: {cmd.reason}")
        ran = amx_probe.run_probe(cmd)
    assert not ran.usable and "arch_prctl" in ran.reason
