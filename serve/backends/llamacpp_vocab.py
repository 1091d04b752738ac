"""The vocabulary as llama.cpp exposes it: token bytes (plain and special spellings) and which tokens
are control tokens that grammar text must never match. Read once per engine; pure functions."""

from __future__ import annotations

import ctypes
import os
from typing import Any


def token_piece(llama_cpp: Any, vocab: object, token: int, special: bool) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    if n < 0:  # buffer too small: -n is the size needed
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    return buf.raw[:n]


def special_ids(llama_cpp: Any, vocab: object, special_pieces: list[bytes]) -> set[int]:
    """Control tokens, and user-defined ones spelled like `<...>`: never grammar text."""
    out = set()
    for t, piece in enumerate(special_pieces):
        attr = llama_cpp.llama_vocab_get_attr(vocab, t)
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<") and piece.endswith(b">")):
            out.add(t)
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
