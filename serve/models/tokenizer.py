"""Load a Hugging Face fast tokenizer, offline, from a GGUF file or an HF-style directory.

transformers builds the tokenizer of a GGUF file from its metadata, which costs ~10 s here (its GGUF
reader walks 49k vocabulary strings one numpy view at a time). The result is saved once in a cache
directory keyed by the file's path, size and mtime, and later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: weights and tokenizers are local


def _cache_root() -> Path:
    root = os.environ.get("SLUICE_TOKENIZER_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sluice" / "tokenizers"


def _cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return _cache_root() / f"{gguf.stem}-{key}"


def _from_gguf(path: Path, chat_template: str | None) -> Any:
    from transformers import AutoTokenizer

    cached = _cache_dir(path)
    if (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        if chat_template and not tok.chat_template:
            tok.chat_template = chat_template
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            tok.save_pretrained(str(cached))
    if chat_template and not tok.chat_template:
        tok.chat_template = chat_template
    return tok


def load_tokenizer_from(path: str | Path, chat_template: str | None = None) -> Any:
    """A transformers fast tokenizer for a .gguf file or an HF-style directory; `chat_template` fills
    in when the tokenizer files carry none."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return _from_gguf(p, chat_template)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ValueError(f"{p} has no tokenizer.json / tokenizer_config.json")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if chat_template and not tok.chat_template:
        tok.chat_template = chat_template
    return tok
