"""Calibration text -> token windows for GPTQ's Hessians.

The calibration text must not be the evaluation text (`sluice bench quality` reads
benchmarks/data/); the default is Python's own documentation topics (`pydoc_data.topics`), which
ships with every CPython.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PYDOC_TOPICS = "pydoc-topics"  # --calib value: the strings of the stdlib's pydoc_data.topics


def read_calibration_text(source: str) -> str:
    """A text file's contents, or `pydoc-topics` for the stdlib's documentation topics."""
    if source == PYDOC_TOPICS:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    p = Path(source).expanduser()
    if not p.is_file():
        raise ValueError(f"calibration file {p} does not exist (or use --calib {PYDOC_TOPICS})")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"calibration file {p} is empty")
    return text


def calibration_windows(tokenizer: Any, text: str, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """nsamples windows of seqlen tokens at seeded random offsets of the tokenized text -> [nsamples, seqlen] int64."""
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples}, {seqlen}")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    if ids.numel() <= seqlen:
        raise ValueError(f"calibration text has {ids.numel()} tokens; need more than seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
