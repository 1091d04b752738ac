"""Calibration text -> token windows for GPTQ's Hessians.

The calibration text must not be the evaluation text (`sluice bench quality` reads benchmarks/data/).
Sources that ship offline:
  pydoc-topics  the strings of CPython's `pydoc_data.topics` (the language reference; technical prose
                with code)
  licenses      the licence texts of Debian's /usr/share/common-licenses (legal English prose),
                identical files counted once
  fortunes      everyday English (quotations, humour, verse, aphorisms): serve/quantize/data/
                fortunes_english.txt, from Debian's `fortunes` package (provenance in data/README.md)
  mixed         all three (the default). Late-layer activations are specific to what a text is about:
                Hessians from one narrow domain leave most directions of other text unmeasured, and
                GPTQ's compensation then adds error there (see benchmarks/results/2026-11-22-quality-2)
  FILE          any text file
`--calib` takes one source or several joined by commas; windows are then split evenly across the
sources, each source's windows at seeded random offsets of its own tokens.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

PYDOC_TOPICS = "pydoc-topics"
LICENSES = "licenses"
FORTUNES = "fortunes"
MIXED = "mixed"
DEFAULT_CALIB = MIXED
LICENSE_DIR = Path("/usr/share/common-licenses")
FORTUNES_FILE = Path(__file__).parent / "data" / "fortunes_english.txt"
_ALIASES = {MIXED: (PYDOC_TOPICS, LICENSES, FORTUNES)}


def _pydoc_topics() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _licenses() -> str:
    texts: dict[str, str] = {}
    for f in sorted(LICENSE_DIR.glob("*")) if LICENSE_DIR.is_dir() else []:
        if f.is_file():
            t = f.read_text(encoding="utf-8", errors="replace")
            texts.setdefault(hashlib.sha256(t.encode()).hexdigest(), t)  # GPL -> GPL-3 etc. once
    if not texts:
        raise ValueError(f"calibration source {LICENSES!r}: no licence texts under {LICENSE_DIR}")
    return "\n\n".join(texts.values())


def read_calibration_text(source: str) -> str:
    """One source's text: `pydoc-topics`, `licenses`, `fortunes`, or a text file's contents."""
    if source == PYDOC_TOPICS:
        return _pydoc_topics()
    if source == LICENSES:
        return _licenses()
    p = FORTUNES_FILE if source == FORTUNES else Path(source).expanduser()
    if not p.is_file():
        raise ValueError(f"calibration file {p} does not exist (or use {PYDOC_TOPICS}, {LICENSES}, {FORTUNES} "
                         f"or {MIXED})")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"calibration file {p} is empty")
    return text


def calibration_sources(spec: str) -> list[str]:
    """"mixed,notes.txt" -> ["pydoc-topics", "licenses", "notes.txt"] (aliases expanded, order kept)."""
    out: list[str] = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            raise ValueError(f"empty calibration source in {spec!r}")
        out.extend(_ALIASES.get(part, (part,)))
    return list(dict.fromkeys(out))


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


def calibration_set(tokenizer: Any, spec: str, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """Windows from every source of `spec` (see the module docstring), split evenly -> [nsamples, seqlen]."""
    sources = calibration_sources(spec)
    if nsamples < len(sources):
        raise ValueError(f"{nsamples} calibration windows cannot cover {len(sources)} sources")
    parts = []
    for i, src in enumerate(sources):
        share = nsamples // len(sources) + (1 if i < nsamples % len(sources) else 0)
        parts.append(calibration_windows(tokenizer, read_calibration_text(src), share, seqlen, seed + i))
    return torch.cat(parts)
