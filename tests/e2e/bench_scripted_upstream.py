"""TEST FIXTURE (not a model): a small real HTTP/1.1 server that streams OpenAI-style SSE chunks at
scripted times, so the benchmark client's timing can be checked against known truth.

For every completion request (its `max_tokens` = n): a role-only chunk at once (chat) or an empty-text
chunk (completions), both of which must NOT count as the first token; then content chunk k at
arrival + ttft + k * itl (absolute schedule, so lateness never accumulates); then a usage chunk and
[DONE]. Keep-alive with chunked transfer encoding, like real servers. Faults on request: every Nth
request a 503 (--fail-every), or a stream cut short without a finish_reason (--truncate-every).

Run: python -m tests.e2e.bench_scripted_upstream --ttft-ms 200 --itl-ms 20  (prints "PORT <n>")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "scripted"


def _chunk(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    payload = f"data: {data}\n\n".encode()
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def _head(status: str, ctype: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{framing}\r\n\r\n".encode()


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


async def _stream(writer: asyncio.StreamWriter, body: dict, cfg: argparse.Namespace, chat: bool) -> None:
    arrival = time.monotonic()
    n = int(body.get("max_tokens") or 16)
    cfg.seen += 1
    if cfg.fail_every and cfg.seen % cfg.fail_every == 0:
        data = json.dumps({"error": {"message": "overloaded", "type": "service_unavailable"}}).encode()
        writer.write(_head("503 Service Unavailable", "application/json", len(data)) + data)
        return
    cut = bool(cfg.truncate_every and cfg.seen % cfg.truncate_every == 0)
    writer.write(_head("200 OK", "text/event-stream", None))
    first = {"delta": {"role": "assistant", "content": ""}} if chat else {"text": ""}
    writer.write(_chunk({"choices": [{"index": 0, **first, "finish_reason": None}]}))
    await writer.drain()
    for k in range(n):
        wait = arrival + (cfg.ttft_ms + k * cfg.itl_ms) / 1e3 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        piece = {"delta": {"content": f" t{k}"}} if chat else {"text": f" t{k}"}
        last = "length" if k == n - 1 else None
        writer.write(_chunk({"choices": [{"index": 0, **piece, "finish_reason": last}]}))
        await writer.drain()
        if cut and k == 1:
            break  # a stream that ends early, never saying why: the client must flag it
    if not cfg.no_usage:
        prompt = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n, "total_tokens": 0}
        writer.write(_chunk({"choices": [], "usage": usage}))
    writer.write(_chunk("[DONE]") + b"0\r\n\r\n")
    await writer.drain()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: argparse.Namespace) -> None:
    try:
        while req := await _read_request(reader):
            method, path, raw = req
            if path.endswith("/completions") and method == "POST":
                await _stream(writer, json.loads(raw), cfg, chat=path.endswith("chat/completions"))
            elif path.endswith("/models"):
                data = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
                writer.write(_head("200 OK", "application/json", len(data)) + data)
            else:
                writer.write(_head("404 Not Found", "text/plain", 0))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(cfg: argparse.Namespace) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, cfg), "127.0.0.1", cfg.port)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--no-usage", action="store_true")
    p.add_argument("--fail-every", type=int, default=0, help="every Nth request answers 503")
    p.add_argument("--truncate-every", type=int, default=0, help="every Nth stream stops after 2 chunks")
    args = p.parse_args()
    args.seen = 0
    asyncio.run(main(args))
