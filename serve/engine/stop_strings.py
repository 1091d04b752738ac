"""Stop strings over a growing output text, with the hold-back that keeps a stream honest.

The one implementation both in-process backends use (the native engine's detokenizer feeds it decoded
text deltas, the llama.cpp engine feeds it token bytes decoded to text). OpenAI semantics: a stop
string found anywhere in the output (also across token boundaries) ends generation; it and everything
after it are never emitted. Until the end, a tail that may be the start of a stop string is held back.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._stops = tuple(s for s in stops if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self.text = ""  # output text so far, cut at the stop string once one matched
        self.stop_hit: str | None = None
        self._emitted = 0  # chars of `text` already handed out

    def feed(self, delta: str) -> str | None:
        """Append decoded output text. Returns the stop string when this delta completed one."""
        if self.stop_hit is not None or not delta:
            return self.stop_hit
        # Only the last max_stop - 1 old chars can begin a match that ends in the new text.
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += delta
        if self._stops:
            window = self.text[start:]
            found = [(i, s) for s in self._stops if (i := window.find(s)) >= 0]
            if found:
                i, s = min(found)
                self.text = self.text[:start + i]
                self.stop_hit = s
        return self.stop_hit

    def take(self, finished: bool = False) -> str:
        """Text not handed out yet. Until `finished` (or a stop hit), a tail that may begin a stop
        string is held back; at the end everything left is released."""
        end = len(self.text)
        if not finished and self.stop_hit is None:
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
            if any(s.startswith(piece) for s in self._stops):
                return k
        return 0
