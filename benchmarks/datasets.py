"""Workloads: random, prefix, multiturn, jsonl. Every one is reproducible from `seed`.

Random text is made of real token ids of the model's tokenizer (special tokens excluded), decoded and
re-encoded until the text has exactly the requested number of tokens, the way a server will count it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from benchmarks.workload import Conversation, Turn

DATASETS = ("random", "prefix", "multiturn", "jsonl")
PREFIX_ORDERS = ("cyclic", "random")


class Tok(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def normal_ids(self) -> list[int]: ...


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "random"
    num_requests: int = 100  # requests (turns) in the workload
    input_len: int = 128  # random: prompt; prefix: unique suffix; multiturn: each user turn
    output_len: int = 128
    range_ratio: float = 0.0  # lengths drawn uniformly from [L*(1-r), L*(1+r)]
    seed: int = 0
    prefix_len: int = 1000  # prefix: shared prefix tokens
    num_prefixes: int = 4  # prefix: distinct shared prefixes
    prefix_order: str = "cyclic"  # prefix: request i takes prefix i % num_prefixes, or a seeded shuffle
    turns: int = 4  # multiturn: user turns per conversation
    path: str | None = None  # jsonl

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; choose one of: {', '.join(DATASETS)}")
        if self.num_requests < 1:
            raise ValueError("--num-requests must be >= 1")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("--input-len and --output-len must be >= 1")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError("--range-ratio must be in [0, 1)")
        if self.name == "prefix" and (self.prefix_len < 1 or self.num_prefixes < 1):
            raise ValueError("--prefix-len and --num-prefixes must be >= 1")
        if self.prefix_order not in PREFIX_ORDERS:
            raise ValueError(f"--prefix-order must be one of: {', '.join(PREFIX_ORDERS)}")
        if self.name == "multiturn" and self.turns < 1:
            raise ValueError("--turns must be >= 1")
        if self.name == "jsonl" and not self.path:
            raise ValueError("--dataset jsonl needs --dataset-path FILE.jsonl")


def exact_text(tok: Tok, rng: random.Random, pool: Sequence[int], n: int) -> tuple[str, int]:
    """Text of (almost always exactly) `n` tokens; returns the text and its real token count."""
    ids = [rng.choice(pool) for _ in range(n)]
    text = tok.decode(ids)
    for _ in range(16):
        again = tok.encode(text)
        if len(again) == n:
            return text, n
        ids = again[:n] if len(again) > n else again + [rng.choice(pool) for _ in range(n - len(again))]
        text = tok.decode(ids)
    return text, len(tok.encode(text))


def _length(rng: random.Random, mean: int, ratio: float) -> int:
    lo, hi = max(1, round(mean * (1 - ratio))), max(1, round(mean * (1 + ratio)))
    return rng.randint(lo, hi)


def build(spec: DatasetSpec, tok: Tok | None) -> list[Conversation]:
    if spec.name == "jsonl":
        return _jsonl(spec, tok)
    if tok is None:
        raise ValueError(f"the {spec.name} dataset needs the model's tokenizer")
    rng = random.Random(spec.seed)
    pool = tok.normal_ids()
    if spec.name == "random":
        return [_single(spec, tok, rng, pool, i, "") for i in range(spec.num_requests)]
    if spec.name == "prefix":
        prefixes = [exact_text(tok, rng, pool, spec.prefix_len)[0] for _ in range(spec.num_prefixes)]
        return [_single(spec, tok, rng, pool, i, prefixes[k]) for i, k in enumerate(prefix_indices(spec))]
    return _multiturn(spec, tok, rng, pool)


def prefix_indices(spec: DatasetSpec) -> list[int]:
    """Which prefix each request of the `prefix` workload takes. cyclic: 0, 1, .., n-1, 0, 1, .. (a
    round-robin router over a divisor of n replicas then sees each prefix on one replica only);
    random: the same counts (every prefix used, as evenly as the request count allows) shuffled by a
    generator of its own, seeded from `seed`: the prefix texts and each request's suffix are drawn
    exactly as for cyclic, only which prefix goes with which request changes."""
    cyclic = [i % spec.num_prefixes for i in range(spec.num_requests)]
    if spec.prefix_order == "random":
        random.Random(f"prefix-order:{spec.seed}").shuffle(cyclic)
    return cyclic


def _single(spec: DatasetSpec, tok: Tok, rng: random.Random, pool: Sequence[int], i: int,
            prefix: str) -> Conversation:
    text, _ = exact_text(tok, rng, pool, _length(rng, spec.input_len, spec.range_ratio))
    prompt = prefix + text
    turn = Turn(prompt=prompt, prompt_len=len(tok.encode(prompt)),
                output_len=_length(rng, spec.output_len, spec.range_ratio), conversation=i)
    return Conversation((turn,))


def _multiturn(spec: DatasetSpec, tok: Tok, rng: random.Random, pool: Sequence[int]) -> list[Conversation]:
    convs: list[Conversation] = []
    left = spec.num_requests
    while left > 0:
        c = len(convs)
        turns = []
        for t in range(min(spec.turns, left)):
            text, n = exact_text(tok, rng, pool, _length(rng, spec.input_len, spec.range_ratio))
            turns.append(Turn(text, n, _length(rng, spec.output_len, spec.range_ratio), c, t))
        convs.append(Conversation(tuple(turns)))
        left -= len(turns)
    return convs


def _jsonl(spec: DatasetSpec, tok: Tok | None) -> list[Conversation]:
    """Each line: {"prompt": str} or {"turns": [str, ...]}, optional "output_len" (or "max_tokens").
    Lines are used in order, cycling when the file has fewer requests than asked for."""
    path = Path(spec.path or "")
    if not path.is_file():
        raise ValueError(f"--dataset-path {path} is not a file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            rows.append(_jsonl_row(line, n, path))
    if not rows:
        raise ValueError(f"{path} has no prompts")
    convs: list[Conversation] = []
    left = spec.num_requests
    while left > 0:
        texts, out_len = rows[len(convs) % len(rows)]
        c = len(convs)
        turns = tuple(Turn(t, len(tok.encode(t)) if tok else None, out_len or spec.output_len, c, k)
                      for k, t in enumerate(texts[:left]))
        convs.append(Conversation(turns))
        left -= len(turns)
    return convs


def _jsonl_row(line: str, n: int, path: Path) -> tuple[list[str], int | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from e
    texts = obj.get("turns") if isinstance(obj, dict) else None
    if texts is None and isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
        texts = [obj["prompt"]]
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f'{path}:{n}: expected {{"prompt": "..."}} or {{"turns": ["...", ...]}}')
    out = obj.get("output_len", obj.get("max_tokens"))
    if out is not None and (not isinstance(out, int) or out < 1):
        raise ValueError(f"{path}:{n}: output_len must be a positive integer")
    return texts, out
