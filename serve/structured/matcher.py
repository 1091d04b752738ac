"""GrammarMatcher (one per sequence) and GrammarFactory (one per tokenizer), over llguidance.

The bitmask layout is llguidance's: int32 [rows, ceil(vocab / 32)], bit (t % 32) of word t // 32 set
when token t is allowed. When a grammar is complete the mask allows only the EOS ids the factory was
built with, so those must be exactly the ids the engine stops on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from copy import copy
from typing import Any

import numpy as np

from serve.structured.spec import StructuredSpec

Tokenize = Callable[[bytes], list[int]]


class GrammarMatcher:
    """The parse state of one sequence. Not thread-safe: one sequence is advanced by one thread."""

    def __init__(self, inner: Any, eos_ids: Sequence[int] = ()) -> None:
        self._m = inner  # llguidance.LLMatcher
        self.eos_ids = frozenset(eos_ids)  # what the mask allows once the grammar is complete
        self.accepted = 0  # tokens accepted and not rolled back

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32 [rows, words], C-contiguous, on the
        CPU: a numpy array or a torch tensor). Drops the GIL while it computes."""
        if isinstance(bitmask, np.ndarray):
            from llguidance.numpy import fill_next_token_bitmask
        else:
            from llguidance.torch import fill_next_token_bitmask
        fill_next_token_bitmask(self._m, bitmask, row)

    def accept(self, token: int) -> bool:
        """Advance by one sampled token. False when the grammar does not allow it (the matcher is then
        in an error state for good: the caller ends the sequence with an error)."""
        ok = bool(self._m.consume_token(token))
        if ok:
            self.accepted += 1
        return ok

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many leading `tokens` the grammar would accept from here, without moving (drafts are
        checked this way: consuming a refused token would leave the matcher in error for good)."""
        return int(self._m.validate_tokens(tokens)) if tokens else 0

    def forced(self) -> int | None:
        """The one token the next mask allows, when known without filling it: where the grammar
        forces text, llguidance's mask allows only the first token of its canonical tokenization."""
        if self._m.is_error():
            return None
        if self._m.is_stopped():
            return next(iter(self.eos_ids)) if len(self.eos_ids) == 1 else None
        if not self._m.compute_ff_bytes():  # ~0.4 us; the tokens below cost ~6 us
            return None
        ff = self._m.compute_ff_tokens()
        return int(ff[0]) if ff else None

    def confirms(self, token: int) -> bool:
        """True only when the next mask allows `token` (~2 us, against ~100 us for a mask). False when
        it does not, or when only the mask can tell: forced text with no forced token, where
        validate_tokens would also accept non-canonical spellings the mask leaves out."""
        if self._m.is_error():
            return False
        if self._m.is_stopped():
            return token in self.eos_ids
        if self._m.compute_ff_bytes():
            return token == self.forced()
        return self.valid_prefix([token]) == 1

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens (rejected speculative drafts)."""
        if n <= 0:
            return
        if n > self.accepted or not self._m.rollback(n):
            raise ValueError(f"cannot roll back {n} tokens ({self.accepted} accepted)")
        self.accepted -= n

    def is_finished(self) -> bool:
        """The grammar is complete and cannot continue: only EOS may follow."""
        return bool(self._m.is_stopped()) and not self._m.is_error()

    def is_error(self) -> bool:
        return bool(self._m.is_error())

    def error(self) -> str:
        return str(self._m.get_error())

    def fork(self) -> GrammarMatcher:
        """An independent copy at the same state (the n > 1 samples of one request)."""
        twin = GrammarMatcher(self._m.deep_copy(), self.eos_ids)
        twin.accepted = self.accepted
        return twin


class GrammarFactory:
    """Compiles specs against one vocabulary. Compiled matchers are cached by spec (LRU) and each
    request gets a deep copy: compiling a JSON schema costs milliseconds, copying microseconds."""

    def __init__(self, tokenizer: Any, cache_size: int = 64) -> None:
        self.tokenizer = tokenizer  # llguidance.LLTokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.eos_ids = list(tokenizer.eos_tokens)
        self._cache: OrderedDict[StructuredSpec, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def for_hf(cls, hf_tokenizer: Any) -> GrammarFactory:
        """A Hugging Face fast tokenizer (its Rust `tokenizers` backend); EOS is its eos_token_id."""
        from llguidance import LLTokenizer

        backend = copy(hf_tokenizer.backend_tokenizer)  # a copy: padding/truncation are switched off
        backend.no_padding()
        backend.no_truncation()
        eos = hf_tokenizer.eos_token_id
        return cls(LLTokenizer(backend.to_str(), n_vocab=len(hf_tokenizer), eos_token=eos))

    @classmethod
    def for_vocab(cls, token_bytes: Sequence[bytes], eos_ids: list[int], special_ids: set[int],
                  tokenize: Tokenize | None = None) -> GrammarFactory:
        """A vocabulary given as each token's bytes (llama.cpp / GGUF). `special_ids` never match
        grammar text; `tokenize` turns text into ids (the model's tokenizer; default: greedy longest
        match over the vocabulary), used by llguidance only for forced text, not for masks."""
        from llguidance import LLTokenizer, TokenizerWrapper

        vocab = _Vocab(token_bytes, eos_ids, special_ids, tokenize)
        return cls(LLTokenizer(TokenizerWrapper(vocab), n_vocab=len(token_bytes), eos_token=list(eos_ids)))

    def matcher(self, spec: StructuredSpec) -> GrammarMatcher:
        """A fresh matcher for `spec`. Raises ValueError (a 400) when the spec does not compile."""
        with self._lock:
            base = self._cache.get(spec)
            if base is not None:
                self._cache.move_to_end(spec)
        if base is None:
            base = self._compile(spec)
            with self._lock:
                self._cache[spec] = base
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return GrammarMatcher(base.deep_copy(), self.eos_ids)

    def _compile(self, spec: StructuredSpec) -> Any:
        from llguidance import LLMatcher

        grammar = spec.grammar()
        err = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if err:
            raise ValueError(f"invalid {spec.kind} constraint: {err}")
        m = LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"invalid {spec.kind} constraint: {m.get_error()}")
        return m

    def new_bitmask(self, rows: int, kind: str = "numpy") -> Any:
        """int32 [rows, ceil(vocab / 32)], all tokens allowed. kind "torch": a CPU tensor (pinned
        when CUDA is present), for the native engine; "numpy" otherwise."""
        words = (self.vocab_size + 31) // 32
        if kind == "torch":
            from llguidance.torch import allocate_token_bitmask

            return allocate_token_bitmask(rows, self.vocab_size)
        return np.full((rows, words), -1, dtype=np.int32)


class _Vocab:
    """The duck-typed tokenizer llguidance.TokenizerWrapper reads (tokens, eos/bos, specials, call)."""

    def __init__(self, token_bytes: Sequence[bytes], eos_ids: list[int], special_ids: set[int],
                 tokenize: Tokenize | None) -> None:
        # llguidance's convention: a leading 0xff byte marks a special token, which text never matches.
        self.tokens = [b"\xff" + (t or b"<special>") if i in special_ids else t
                       for i, t in enumerate(token_bytes)]
        self.eos_token_id = eos_ids[0]
        self.bos_token_id = None
        self.special_token_ids = sorted(special_ids)
        self._tokenize = tokenize or _greedy(token_bytes, special_ids)

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenize(text)


def _greedy(token_bytes: Sequence[bytes], special_ids: set[int]) -> Tokenize:
    ids = {t: i for i, t in enumerate(token_bytes) if t and i not in special_ids}
    longest = max((len(t) for t in ids), default=1)

    def tokenize(text: bytes) -> list[int]:
        out, pos = [], 0
        while pos < len(text):
            for n in range(min(longest, len(text) - pos), 0, -1):
                tid = ids.get(text[pos:pos + n])
                if tid is not None:
                    out.append(tid)
                    pos += n
                    break
            else:
                pos += 1  # a byte no token spells: skipped (forced text is then only a hint)
        return out

    return tokenize
