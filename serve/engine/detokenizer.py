"""Incremental detokenization with stop strings (OpenAI semantics).

Text is produced by decoding a short window of tokens twice (up to the previous read point, and up to
the newest token) and taking the difference; this keeps word-boundary rules of the tokenizer's
decoder (leading spaces, byte fallback) right without decoding the whole history each step.

Two hold-backs keep the stream honest:
- text ending in U+FFFD is held: the token completed only part of a multi-byte character;
- text that could be the start of a stop string is held until the next tokens resolve it.
A stop string found anywhere in the output (also across token boundaries) ends the request; the
stop string and everything after it are never emitted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

Decode = Callable[[list[int]], str]
REPLACEMENT = "\ufffd"
# Prompt tokens decoded as left context, so the first output token's leading space is kept.
_CONTEXT_TOKENS = 5


def make_decode(tokenizer: Any, skip_special_tokens: bool = True) -> Decode:
    """A fast `ids -> text` for an HF tokenizer: the Rust backend directly when there is one (no
    Python-side space clean-up, which would make incremental diffs inconsistent).

    The backend is a private copy: the engine thread decodes while the event loop thread encodes
    with the original, and a Rust tokenizer shared across threads can fail with "Already borrowed".
    """
    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "decode"):
        backend = copy.deepcopy(backend)
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    def __init__(self, decode: Decode, prompt_token_ids: Sequence[int], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._tokens = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # window start: decoding from here reproduces the text seen so far
        self._read_offset = len(self._tokens)  # tokens before this are already in `text`
        self._stop = tuple(stop)
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self.text = ""  # decoded output text so far, cut at a stop string once one matched
        self._emitted = 0  # chars of `text` already handed out
        self.stop_hit: str | None = None

    def add_token(self, token_id: int) -> str | None:
        """Feed one output token. Returns the stop string when this token completed one."""
        if self.stop_hit is not None:
            return self.stop_hit
        self._tokens.append(token_id)
        prefix_text = self._decode(self._tokens[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return None  # nothing printable yet (partial character, or a token that decodes empty)
        self._append(new_text[len(prefix_text):])
        # Drop tokens that left the window so the list stays short.
        del self._tokens[:self._read_offset]
        self._prefix_offset, self._read_offset = 0, len(self._tokens)
        return self.stop_hit

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += delta
        if not self._stop:
            return
        window = self.text[start:]
        found = [(i, s) for s in self._stop if (i := window.find(s)) >= 0]
        if found:
            i, s = min(found)
            self.text = self.text[:start + i]
            self.stop_hit = s

    def flush(self) -> None:
        """At finish: decode whatever is held for an unfinished character (emitting U+FFFD)."""
        if self.stop_hit is not None or self._read_offset == len(self._tokens):
            return
        prefix_text = self._decode(self._tokens[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset:])
        if len(new_text) > len(prefix_text):
            self._append(new_text[len(prefix_text):])
        self._prefix_offset = self._read_offset = len(self._tokens)

    def take_new_text(self, finished: bool = False) -> str:
        """Text not handed out yet. Until `finished`, a tail that may begin a stop string is held."""
        end = len(self.text)
        if not finished and self._stop and self.stop_hit is None:
            end -= self._partial_stop_len()
        end = max(end, self._emitted)
        out = self.text[self._emitted:end]
        self._emitted = end
        return out

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        tail = self.text[-(self._max_stop - 1):] if self._max_stop > 1 else ""
        for k in range(len(tail), 0, -1):
            piece = tail[-k:]
            if any(s.startswith(piece) for s in self._stop):
                return k
        return 0
