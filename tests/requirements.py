"""One rule for tests whose component is missing: skip on a developer's machine, fail in CI.

A skip in CI hides the thing it skips: the suite stays green while the vLLM backend or the CPU
kernels go untested (and the engine quietly runs its slow fallback). So a component is *required*
when `CI=true` (CI sets it; .ci/run exports it) or when `SLUICE_REQUIRE` names it (a comma list, e.g.
`SLUICE_REQUIRE=vllm,kernels`, or `all`). A required component that is missing fails the test with
what is missing and how to get it; otherwise the test is skipped with the same words (`-ra` prints
them).

What the machine is, not what was installed, stays a plain skip everywhere: no CUDA device
(`gpu`-marked tests; CI never has a GPU), a CPU without an ISA extension, a non-x86 host.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Component -> how to get it. The keys are the names SLUICE_REQUIRE accepts.
HOW_TO_GET: dict[str, str] = {
    "vllm": "run `make vllm-env` (make test does), or point SLUICE_VLLM_PYTHON at a python that imports vllm",
    "kernels": "install a C++ compiler and ninja (`make install` builds the kernels; "
               "`python -m serve.kernels.cpu` says why they are off)",
    "model": "run `sluice models pull smollm2-135m-instruct` (make test does)",
    "ray": "pip install -e '.[ray]' (make install does)",
    "otel": "pip install -e '.[otel]' (make install does)",
    "browser": "`apt-get install -y chromium` and `pip install -e .[dev]` (playwright; .ci/run does both)",
}


def required(component: str) -> bool:
    """Whether a missing `component` fails the test rather than skipping it."""
    if component not in HOW_TO_GET:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(HOW_TO_GET)}")
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        return True
    wanted = {w.strip() for w in os.environ.get("SLUICE_REQUIRE", "").split(",") if w.strip()}
    return component in wanted or "all" in wanted


def message(component: str, missing: str) -> str:
    return f"{component} missing: {missing}; to get it: {HOW_TO_GET[component]}"


def require(component: str, missing: str | None) -> None:
    """Call where a test needs `component`; `missing` is why it is absent, None when it is present.
    Fails (required) or skips (local run) when absent; returns when present."""
    if missing is None:
        return
    text = message(component, missing)
    if required(component):
        pytest.fail(f"{text} (required: CI={os.environ.get('CI', '')!r}, "
                    f"SLUICE_REQUIRE={os.environ.get('SLUICE_REQUIRE', '')!r})", pytrace=False)
    pytest.skip(text)


def requires(component: str, missing: str | None) -> pytest.MarkDecorator:
    """The decorator / `pytestmark` form of `require`: tests/conftest.py applies it at setup, so a
    required component fails each test that needs it instead of the whole module's collection."""
    return pytest.mark.requires(component, missing)


def kernels_missing() -> str | None:
    """Why the sluice CPU kernels cannot be built here, or None."""
    from sluice_kernels import cpu

    return cpu.unavailable_reason()


def model_missing(name: str = "smollm2-135m-instruct") -> str | None:
    from serve.model_store import is_pulled

    return None if is_pulled(name) else f"{name} is not pulled"


def vllm_missing(python: str | None = None) -> str | None:
    """Why `python` (default $SLUICE_VLLM_PYTHON) cannot run vLLM, or None when it imports vllm."""
    python = os.environ.get("SLUICE_VLLM_PYTHON", "") if python is None else python
    if not python:
        return "SLUICE_VLLM_PYTHON is not set (make test sets it to the venv `make vllm-env` builds)"
    if not Path(python).is_file():
        return f"no vLLM venv: SLUICE_VLLM_PYTHON={python} does not exist"
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{python} cannot import vllm ({tail})"
    return None


def import_missing(*modules: str) -> str | None:
    """Why one of `modules` cannot be imported, or None when all can."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            return f"cannot import {name} ({e})"
    return None


def ray_missing() -> str | None:
    return import_missing("ray", "ray.serve")


def otel_missing() -> str | None:
    return import_missing("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def browser_missing() -> str | None:
    """Why the web UI tests cannot drive a browser: Playwright's Python API and Debian's chromium
    (Playwright's own browser download needs the internet; we pass `executable_path`)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None if chromium_path() else "no chromium executable on PATH"


def chromium_path() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")
