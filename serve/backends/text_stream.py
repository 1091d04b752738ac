"""Token bytes -> text deltas, with stop strings matched across token boundaries.

Never emits half a UTF-8 character (an incremental decoder holds partial bytes). Stop strings and
the hold-back of a possible stop-string start are the shared StopStringMatcher (the native engine's
detokenizer uses the same one), so both in-process backends cut and flush text identically.
"""

from __future__ import annotations

import codecs

from serve.engine.stop_strings import StopStringMatcher


class TextStream:
    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopStringMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self._stops.stop_hit is not None

    def push(self, piece: bytes) -> str:
        """Feed one token's bytes; returns the text that is safe to emit now. Sets `stopped`."""
        if self.stopped:
            return ""
        self._stops.feed(self._decoder.decode(piece))
        return self._stops.take()

    def flush(self) -> str:
        """At the end of generation, for any reason: whatever was held back (nothing past a stop)."""
        if not self.stopped:
            self._stops.feed(self._decoder.decode(b"", final=True))
        return self._stops.take(finished=True)
