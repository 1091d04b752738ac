"""`sluice run` through a real pseudo-terminal (interactive chat) and as a script (argument, piped
stdin, its own server), and `sluice ps`, against real servers on the bundled model."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.server_proc import MODEL, REPO, ServerProc, start_server
from tests.requirements import model_missing, require

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    require("model", model_missing())
    s = start_server(["--backend", "llamacpp", "--model", MODEL, "--models-max", "1"], tmp_path_factory.mktemp("run"))
    yield s
    s.stop()


class Pty:
    """A child on a pty: what a user at a terminal would see and type."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"did not see {text!r}; got:\n{self.seen[-2000:]}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    continue
        before, _, self.seen = self.seen.partition(text)
        return before

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "serve.cli", *args]


def test_interactive_chat_through_a_pty(server: ServerProc) -> None:
    t = Pty(_cli("run", MODEL, "--url", server.base_url))
    try:
        t.expect(">>> ")
        t.send("/set max_tokens 12")
        t.expect("(set max_tokens = 12)")
        t.send("/set temperature 0")
        t.expect(">>> ")
        t.send("What is the capital of France?")
        answer = t.expect(">>> ").replace("What is the capital of France?", "").strip()
        assert answer, "no answer streamed"
        t.send("And of Italy?")  # the history goes along: a second turn works
        assert t.expect(">>> ").replace("And of Italy?", "").strip()
        t.send("/clear")
        t.expect("(history cleared)")
        t.send("/bye")
        assert t.proc.wait(timeout=20) == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
        os.close(t.master)


def test_prompt_argument_and_piped_stdin(server: ServerProc) -> None:
    r = subprocess.run(_cli("run", MODEL, "Say hi.", "--max-tokens", "16", "--url", server.base_url + "/v1"), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = subprocess.run(_cli("run", MODEL, "--max-tokens", "16", "--url", server.base_url), input="Say hi.\n", cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() and ">>>" not in r.stdout, r.stderr


def test_run_starts_its_own_server(tmp_path) -> None:  # noqa: ANN001
    require("model", model_missing())
    r = subprocess.run(_cli("run", MODEL, "Say hi.", "--max-tokens", "16", "--backend", "llamacpp"), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_ps_lists_loaded_models(server: ServerProc) -> None:
    subprocess.run(_cli("run", MODEL, "Hi", "--max-tokens", "4", "--url", server.base_url), cwd=REPO, env=ENV, capture_output=True,
                   timeout=120, check=True)  # loads it
    r = subprocess.run(_cli("ps", "--url", server.base_url), cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith(MODEL))
    assert "loaded" in row and "MiB" in row
    down = subprocess.run(_cli("ps", "--url", "http://127.0.0.1:9"), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 1 and "no Sluice server" in down.stderr
