"""The skip policy of tests/requirements.py: a missing component skips a local run and fails CI.

The subprocess tests run the real vLLM backend test file with its venv pointed at a path that does
not exist, so they prove what CI would see with the vLLM venv removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import HOW_TO_GET, message, required

ROOT = Path(__file__).resolve().parents[2]
NO_VENV = "/nonexistent/sluice-vllm-venv/bin/python"


@pytest.mark.parametrize(("ci", "want", "component", "expected"), [
    ("", "", "vllm", False),
    ("true", "", "vllm", True),
    ("1", "", "kernels", True),
    ("false", "", "vllm", False),
    ("", "vllm,kernels", "kernels", True),
    ("", "vllm, model", "kernels", False),
    ("", "all", "model", True),
])
def test_required_reads_ci_and_sluice_require(monkeypatch: pytest.MonkeyPatch, ci: str, want: str,
                                              component: str, expected: bool) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("SLUICE_REQUIRE", want)
    assert required(component) is expected


def test_unknown_component_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="unknown component 'vlm'"):
        required("vlm")


def test_message_names_the_component_and_how_to_get_it() -> None:
    text = message("vllm", "no vLLM venv")
    assert text.startswith("vllm missing: no vLLM venv") and "make vllm-env" in text
    assert set(HOW_TO_GET) == {"vllm", "kernels", "model", "browser", "ray", "otel"}


def _run_vllm_test(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "SLUICE_REQUIRE", "PYTEST_ADDOPTS")}
    base.update(SLUICE_VLLM_PYTHON=NO_VENV, HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                           "tests/e2e/test_vllm_backend.py"], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_missing_vllm_venv_fails_under_ci() -> None:
    proc = _run_vllm_test(CI="true")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"vllm missing: no vLLM venv: SLUICE_VLLM_PYTHON={NO_VENV} does not exist" in out, out
    assert "make vllm-env" in out and " skipped" not in out, out


@pytest.mark.slow
def test_missing_vllm_venv_fails_when_sluice_require_names_it() -> None:
    proc = _run_vllm_test(SLUICE_REQUIRE="kernels,vllm")
    assert proc.returncode != 0 and "vllm missing" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_missing_vllm_venv_skips_locally_with_the_reason() -> None:
    proc = _run_vllm_test()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped" in proc.stdout and "vllm missing: no vLLM venv" in proc.stdout, proc.stdout


@pytest.fixture
def fresh_kernels() -> object:
    """sluice_kernels.cpu with its `available()` verdict forgotten before and after the test."""
    from sluice_kernels import cpu

    cpu.available.cache_clear()
    yield cpu
    cpu.available.cache_clear()


def test_kernel_fallback_is_a_warning_naming_the_reason(fresh_kernels: object, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SLUICE_CPU_KERNELS", "0")
    monkeypatch.delenv("SLUICE_REQUIRE", raising=False)
    assert fresh_kernels.available() is False
    assert any(r.levelname == "WARNING" and "SLUICE_CPU_KERNELS=0" in r.getMessage() for r in caplog.records)


def test_required_kernels_refuse_the_fallback(fresh_kernels: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice_kernels.cpu.__main__ import exit_code

    monkeypatch.setenv("SLUICE_CPU_KERNELS", "0")
    monkeypatch.setenv("SLUICE_REQUIRE", "vllm, kernels")
    with pytest.raises(RuntimeError, match="required .* unavailable: disabled by SLUICE_CPU_KERNELS=0"):
        fresh_kernels.available()
    assert exit_code(False) == 1 and exit_code(True) == 0
    monkeypatch.setenv("SLUICE_REQUIRE", "vllm")
    assert exit_code(False) == 0
