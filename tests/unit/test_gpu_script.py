"""benchmarks/gpu/run.sh --dry-run passes on CPU, and fails on the mismatches it exists to catch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dry_run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--dry-run"], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120)


def test_dry_run_passes() -> None:
    proc = dry_run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry-run: ok" in proc.stdout and "test_compiled_kernels_match_references_on_cuda" in proc.stdout


def test_unpinned_or_drifted_wheel_fails(tmp_path: Path) -> None:
    for line, why in (("gguf\n", "not pinned"), ("gguf==0.18.0\n", "pyproject.toml pins gguf==0.19.0")):
        (tmp_path / "wheels.txt").write_text(line)
        proc = dry_run(WHEEL_LIST=str(tmp_path / "wheels.txt"))
        assert proc.returncode != 0 and why in proc.stdout + proc.stderr


def test_missing_or_unmarked_gpu_test_fails() -> None:
    proc = dry_run(GPU_TESTS="tests/kernels/test_no_such_file.py")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = dry_run(GPU_TESTS="tests/unit/test_config.py")  # exists, but holds no gpu-marked test
    assert proc.returncode != 0 and "holds no test marked gpu" in proc.stderr
