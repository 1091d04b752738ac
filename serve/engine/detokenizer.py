"""Incremental detokenization with stop strings (OpenAI semantics).

Text is produced by decoding a short window of tokens twice (up to the previous read point, and up to
the newest token) and taking the difference; this keeps word-boundary rules of the tokenizer's
decoder (leading spaces, byte fallback) right without decoding the whole history each step.

Two hold-backs keep the stream honest:
- text ending in U+FFFD is held: the token completed only part of a multi-byte character;
- text that could be the start of a stop string is held until the next tokens resolve it (the
  shared StopStringMatcher, which the llama.cpp engine uses too).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from serve.engine.stop_strings import StopStringMatcher

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
        self._stops = StopStringMatcher(stop)

    @property
    def text(self) -> str:
        """Decoded output text so far, cut at a stop string once one matched."""
        return self._stops.text

    @property
    def stop_hit(self) -> str | None:
        return self._stops.stop_hit

    def add_token(self, token_id: int) -> str | None:
        """Feed one output token. Returns the stop string when this token completed one."""
        if self.stop_hit is not None:
            return self.stop_hit
        self._tokens.append(token_id)
        prefix_text = self._decode(self._tokens[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return None  # nothing printable yet (partial character, or a token that decodes empty)
        self._stops.feed(new_text[len(prefix_text):])
        # Drop tokens that left the window so the list stays short.
        del self._tokens[:self._read_offset]
        self._prefix_offset, self._read_offset = 0, len(self._tokens)
        return self.stop_hit

    def flush(self) -> None:
        """At finish: decode whatever is held for an unfinished character (emitting U+FFFD)."""
        if self.stop_hit is not None or self._read_offset == len(self._tokens):
            return
        prefix_text = self._decode(self._tokens[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset:])
        if len(new_text) > len(prefix_text):
            self._stops.feed(new_text[len(prefix_text):])
        self._prefix_offset = self._read_offset = len(self._tokens)

    def take_new_text(self, finished: bool = False) -> str:
        """Text not handed out yet. Until `finished`, a tail that may begin a stop string is held."""
        return self._stops.take(finished)
