"""The model's tokenizer, loaded offline: from the GGUF file (transformers reads its vocabulary) or a
local Hugging Face directory. Prompts are built from it so they have the requested token count."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


class TokenizerNotFound(Exception):
    """No tokenizer could be found for the model; the message says what to pass."""


@dataclass(frozen=True)
class BenchTokenizer:
    """A `tokenizers.Tokenizer` (fast to load: no transformers import once the vocabulary is cached)."""

    tk: Any  # tokenizers.Tokenizer
    source: str  # path it was loaded from

    def encode(self, text: str) -> list[int]:
        return list(self.tk.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def special_tokens(self) -> dict[int, str]:
        """Added tokens (control tokens such as <|im_start|>), by id."""
        return {i: t.content for i, t in self.tk.get_added_tokens_decoder().items()}

    def normal_ids(self) -> list[int]:
        """Token ids that are not special (random prompts must not contain control tokens)."""
        special = self.special_tokens()
        return [i for i in range(self.tk.get_vocab_size()) if i not in special]


def resolve_tokenizer_path(model: str, tokenizer: str | None) -> Path:
    """--tokenizer wins; else a model that is a local path; else a pulled catalog model."""
    for candidate in (tokenizer, model):
        if candidate and Path(candidate).expanduser().exists():
            return Path(candidate).expanduser()
    if tokenizer:
        raise TokenizerNotFound(f"--tokenizer {tokenizer!r} does not exist (give a .gguf file or an HF directory)")
    try:
        from serve.model_store import CATALOG, is_pulled, model_path
    except ImportError as e:  # pragma: no cover - the package ships both
        raise TokenizerNotFound(str(e)) from e
    if model in CATALOG:
        if not is_pulled(model):
            raise TokenizerNotFound(f"model {model!r} is not pulled; run `sluice models pull {model}` "
                                    "or pass --tokenizer")
        return model_path(model)
    raise TokenizerNotFound(f"no local tokenizer for model {model!r}; pass --tokenizer DIR|FILE.gguf")


def _cache_dir(gguf: Path) -> Path:
    """Where the tokenizer converted from `gguf` (or a dir) is kept; keyed by path, size and mtime."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sluice" / "tokenizers"
    return root / key


def _from_transformers(path: Path, cache: Path) -> Any:
    """transformers converts a GGUF vocabulary (or a dir without tokenizer.json) in 10-25 s; the result
    is saved to `cache` and reused, so later loads skip transformers entirely."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, whatever the caller forgot
    from transformers import AutoTokenizer

    if path.is_file():
        hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        hf = AutoTokenizer.from_pretrained(str(path))
    try:
        tmp = cache.with_name(cache.name + f".{os.getpid()}.partial")
        hf.save_pretrained(str(tmp))
        tmp.rename(cache)  # atomic: a reader never sees half a cache
    except OSError:
        pass  # a read-only home or a racing writer: the tokenizer in hand is good either way
    return hf.backend_tokenizer


@lru_cache(maxsize=4)
def load_tokenizer(model: str, tokenizer: str | None = None) -> BenchTokenizer:
    from tokenizers import Tokenizer

    path = resolve_tokenizer_path(model, tokenizer)
    ready = path / "tokenizer.json" if path.is_dir() else _cache_dir(path) / "tokenizer.json"
    try:
        if ready.is_file():
            return BenchTokenizer(tk=Tokenizer.from_file(str(ready)), source=str(path))
        return BenchTokenizer(tk=_from_transformers(path, _cache_dir(path)), source=str(path))
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise TokenizerNotFound(f"cannot load a tokenizer from {path}: {e}") from e
