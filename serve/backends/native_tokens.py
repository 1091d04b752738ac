"""Token strings and bytes for logprobs, from an HF tokenizer, cached per token id.

OpenAI's logprobs give each token's text and its raw bytes. For byte-level BPE vocabularies (GPT-2
style, SmolLM2's) a token may hold part of a multi-byte character, so its bytes come from mapping
the vocabulary string back through the byte-to-unicode table, not from decoding it alone.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from serve.backends.base import TokenLogprob
from serve.engine.batch import SampledToken


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+i."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class TokenTexts:
    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}

    def get(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        text = self._tok.decode([token_id], skip_special_tokens=False)
        piece = self._tok.convert_ids_to_tokens(token_id)
        table = _unicode_to_byte()
        if isinstance(piece, str) and piece and all(c in table for c in piece):
            raw = bytes(table[c] for c in piece)
            if raw.decode("utf-8", "replace") == text or "\ufffd" in text:
                return text, tuple(raw)
        return text, tuple(text.encode("utf-8"))

    def logprobs(self, sampled: list[SampledToken]) -> tuple[TokenLogprob, ...]:
        out = []
        for st in sampled:
            text, raw = self.get(st.token_id)
            top = tuple((self.get(t)[0], lp) for t, lp in st.top_logprobs)
            lp = st.logprob if st.logprob is not None else float("nan")
            out.append(TokenLogprob(token=text, logprob=lp, token_id=st.token_id, bytes_=raw, top=top))
        return tuple(out)
