"""`sluice run MODEL [PROMPT] [--url BASE]`: chat with a model from the terminal (like `ollama run`).

Uses the server at --url, else one already listening on 127.0.0.1:8000 that serves MODEL, else starts
`sluice serve --model MODEL` on a free loopback port for the session (stopped on exit). With PROMPT, or
with stdin not a terminal, it prints one answer and exits; otherwise it is a chat that keeps the history:
`/bye`, `/clear`, `/set temperature 0.2` (also top_p, max_tokens, seed, system), `/help`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
HELP = "/bye  /clear  /set temperature|top_p|max_tokens|seed VALUE  /set system TEXT  /help"
_NUMERIC = {"temperature": float, "top_p": float, "max_tokens": int, "seed": int}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="chat with a model in the terminal (starts a server if none is given)")
    p.add_argument("model", help="catalog name or local path")
    p.add_argument("prompt", nargs="?", default=None, help="answer this one prompt and exit")
    p.add_argument("--url", default=None, help=f"use the server at this base URL (default: {DEFAULT_URL} if it "
                                               "serves MODEL, else start one)")
    p.add_argument("--api-key", default=None, help="bearer key for the server (default: $SLUICE_API_KEY)")
    p.add_argument("--backend", default="auto", help="backend of a server this command starts")
    for name, cast in _NUMERIC.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=cast, default=None,
                       help=f"sampling {name} (also `/set {name} VALUE` in the chat)")
    p.set_defaults(func=run)


class Session:
    def __init__(self, base: str, model: str, key: str | None) -> None:
        self.base, self.model = base.rstrip("/"), model
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.history: list[dict[str, str]] = []
        self.params: dict[str, float | int] = {}
        self.system = ""

    def ask(self, text: str, out: object = sys.stdout) -> str:
        """Stream the answer to `out`; keep both turns in the history. Returns the answer."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        messages.append({"role": "user", "content": text})
        body = {"model": self.model, "messages": messages, "stream": True, **self.params}
        answer = []
        with httpx.stream("POST", f"{self.base}/v1/chat/completions", json=body, headers=self.headers,
                          timeout=httpx.Timeout(600, connect=10)) as r:
            if r.status_code != 200:
                raise RuntimeError(_error(r))
            for piece in _deltas(r.iter_lines()):
                answer.append(piece)
                out.write(piece)  # type: ignore[attr-defined]
                out.flush()  # type: ignore[attr-defined]
        out.write("\n")  # type: ignore[attr-defined]
        text_out = "".join(answer)
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": text_out}]
        return text_out

    def command(self, line: str) -> bool:
        """Handle a /command; False means leave."""
        words = line.split(maxsplit=2)
        if words[0] in ("/bye", "/exit"):
            return False
        if words[0] == "/clear":
            self.history.clear()
            print("(history cleared)")
        elif words[0] == "/set" and len(words) == 3:
            self._set(words[1], words[2])
        else:
            print(HELP)
        return True

    def _set(self, name: str, value: str) -> None:
        if name == "system":
            self.system = value
        elif name in _NUMERIC:
            try:
                self.params[name] = _NUMERIC[name](value)
            except ValueError:
                print(f"(not a number: {value})")
                return
        else:
            print(HELP)
            return
        print(f"(set {name} = {value})")


def _deltas(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:]).get("choices", []):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield piece


def _error(r: httpx.Response) -> str:
    r.read()
    try:
        return f"{r.status_code}: {r.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"


def _serves(base: str, model: str, headers: dict[str, str]) -> bool:
    try:
        r = httpx.get(f"{base}/v1/models", headers=headers, timeout=2)
        return r.status_code == 200 and any(m.get("id") == model for m in r.json().get("data", []))
    except (httpx.HTTPError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _own_server(model: str, backend: str, timeout_s: float = 300.0) -> Iterator[str]:
    """Start `sluice serve` for this session; its log goes to stderr only if it fails to come up."""
    port = _free_port()
    cmd = [sys.executable, "-m", "serve.cli", "serve", "--model", model, "--port", str(port),
           "--backend", backend, "--log-level", "warning", "--no-ui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(base):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else "timed out"
                raise RuntimeError(f"could not start a server for {model}: {err.strip()[-800:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _server(args: argparse.Namespace, headers: dict[str, str]):  # noqa: ANN202 - a context manager
    if args.url:
        return _given(args.url)
    if _serves(DEFAULT_URL, args.model, headers):
        return _given(DEFAULT_URL)
    return _own_server(args.model, args.backend)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/").removesuffix("/v1")


def run(args: argparse.Namespace) -> int:
    key = args.api_key or os.environ.get("SLUICE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    one_shot = args.prompt if args.prompt is not None else None if sys.stdin.isatty() else sys.stdin.read()
    try:
        with _server(args, headers) as base:
            session = Session(base, args.model, key)
            session.params = {k: getattr(args, k) for k in _NUMERIC if getattr(args, k) is not None}
            if one_shot is not None:
                session.ask(one_shot.strip())
                return 0
            return _repl(session)
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _repl(session: Session) -> int:
    print(f"chatting with {session.model}; {HELP}")
    while True:
        try:
            line = input(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        try:
            session.ask(line)
        except KeyboardInterrupt:  # Ctrl-C stops this answer (closing the stream aborts it), not the chat
            print("\n(stopped)")
        except RuntimeError as e:
            print(f"error: {e}")
