"""TEST FIXTURE (a fake, not a model): a tiny real HTTP/1.1 server on 127.0.0.1 that plays a badly
behaved OpenAI-compatible upstream, so the chaos tests can check what the router does about it.

Each instance runs its own event loop in a daemon thread and answers every completion request
according to its current `mode`, which a test may change at any time:

  ok     stream `CHUNKS` content chunks, a usage chunk and [DONE]
  429    429 with Retry-After: 7              500    500 with an error body
  hang   read the request, never answer       stall  send two chunks, then go silent
  cut    send two chunks, then drop the TCP connection without ending the response
  short  send two chunks and end the response cleanly, but without finish_reason or [DONE]

GET /health and GET /v1/models always answer 200, as a live but misbehaving server would.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

CHUNKS = 4
HOLD_S = 30.0  # how long `hang` and `stall` hold a connection: longer than any deadline under test


def _chunk(data: str) -> bytes:
    payload = f"data: {data}\n\n".encode()
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _json_response(status: str, body: dict, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    return head.encode() + data


def _piece(chat: bool, k: int, finish: str | None) -> str:
    part = {"delta": {"content": f" t{k}"}} if chat else {"text": f" t{k}"}
    return json.dumps({"choices": [{"index": 0, **part, "finish_reason": finish}]})


class FakeUpstream:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.hits: Counter[str] = Counter()  # completion requests answered, by mode
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, daemon=True, name="fake-upstream").start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (req := await _read_request(reader)) is not None:
                if not await self._answer(writer, *req):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes) -> bool:
        """Answer one request; False when the connection must not be reused."""
        if method == "GET":
            data = {"status": "ok"} if path.endswith("/health") else {"object": "list", "data": []}
            writer.write(_json_response("200 OK", data))
            await writer.drain()
            return True
        mode = self.mode
        self.hits[mode] += 1
        if mode in ("429", "500"):
            status = "429 Too Many Requests" if mode == "429" else "500 Internal Server Error"
            err = {"error": {"message": f"fake upstream says {mode}", "type": "server_error"}}
            writer.write(_json_response(status, err, "Retry-After: 7\r\n" if mode == "429" else ""))
            await writer.drain()
            return True
        if mode == "hang":
            await asyncio.sleep(HOLD_S)
            return False
        return await self._stream(writer, mode, path.endswith("/chat/completions"), json.loads(body or b"{}"))

    async def _stream(self, writer: asyncio.StreamWriter, mode: str, chat: bool, body: dict) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        n = CHUNKS if mode == "ok" else 2
        for k in range(n):
            writer.write(_chunk(_piece(chat, k, "length" if mode == "ok" and k == n - 1 else None)))
            await writer.drain()
            await asyncio.sleep(0.01)
        if mode == "stall":
            await asyncio.sleep(HOLD_S)
            return False
        if mode == "cut":
            writer.transport.abort()  # RST, no terminating chunk: the stream is cut off mid-response
            return False
        if mode == "ok":
            usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
            writer.write(_chunk(json.dumps({"choices": [], "usage": usage})) + _chunk("[DONE]"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode().split(" ", 2)
    length = 0
    while (h := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = h.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return method, path, await reader.readexactly(length) if length else b""
