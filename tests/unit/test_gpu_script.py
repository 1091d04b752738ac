"""benchmarks/gpu/run.sh --dry-run passes on CPU, and fails on the mismatches it exists to catch."""

from __future__ import annotations

import json
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


def test_offline_bench_pairs_cuda_graph_and_eager_runs(tmp_path: Path) -> None:
    from benchmarks.gpu.collect import collect
    from benchmarks.gpu.engine_bench import bench_argv, runs

    assert [(b, g, p.name) for b, g, p in runs("1,32", tmp_path)] == [
        (1, True, "offline_b1.json"), (1, False, "offline_b1_eager.json"),
        (32, True, "offline_b32.json"), (32, False, "offline_b32_eager.json")]
    assert "cuda_graphs=false" in bench_argv(tmp_path, 1, tmp_path / "x.json", 8, "cuda", cuda_graphs=False)
    for name, rate in (("offline_b1.json", 300.0), ("offline_b1_eager.json", 100.0), ("offline_b32.json", 50.0)):
        (tmp_path / name).write_text(json.dumps({"decode_tokens_per_s": rate}))
    out = collect(tmp_path)
    assert set(out["offline_by_batch"]) == {"1", "32"} and set(out["offline_eager_by_batch"]) == {"1"}
    assert out["cuda_graph_speedup"] == {"1": 3.0, "32": None}
