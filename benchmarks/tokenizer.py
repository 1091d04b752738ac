"""The model's tokenizer, loaded offline: from the GGUF file (transformers reads its vocabulary) or a
local Hugging Face directory. Prompts are built from it so they have the requested token count."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


class TokenizerNotFound(Exception):
    """No tokenizer could be found for the model; the message says what to pass."""


@dataclass(frozen=True)
class BenchTokenizer:
    hf: Any  # a transformers PreTrainedTokenizerFast
    source: str  # path it was loaded from

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def normal_ids(self) -> list[int]:
        """Token ids that are not special (random prompts must not contain control tokens)."""
        special = set(self.hf.all_special_ids) | set(getattr(self.hf, "added_tokens_decoder", {}))
        return [i for i in range(len(self.hf)) if i not in special]


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


@lru_cache(maxsize=4)
def load_tokenizer(model: str, tokenizer: str | None = None) -> BenchTokenizer:
    path = resolve_tokenizer_path(model, tokenizer)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, whatever the caller forgot
    from transformers import AutoTokenizer

    try:
        if path.is_file():
            hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            hf = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise TokenizerNotFound(f"cannot load a tokenizer from {path}: {e}") from e
    return BenchTokenizer(hf=hf, source=str(path))
