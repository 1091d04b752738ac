"""Randomness of the sampler: a request with a seed draws from its own torch.Generator, seeded with
seed + sample_index (+ an offset that keeps a draft model's stream apart from the target's) and kept
across steps until `forget`; unseeded requests draw from one shared generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

_SEEDS = 1 << 64


class Seeded(Protocol):
    """What a row tells the generators: its key (one per sample), seed and sample index."""

    @property
    def req_id(self) -> str: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def sample_index(self) -> int: ...


def generator_seed(seed: int, sample_index: int = 0, offset: int = 0) -> int:
    """A request seed (any signed 64-bit integer, as the API takes it) as a torch seed: modulo 2^64,
    so every seed is valid and distinct seeds stay distinct (torch refuses values past 2^64 - 1, which
    seed + sample_index + offset can reach)."""
    return (seed + sample_index + offset) % _SEEDS


class Generators:
    def __init__(self, device: torch.device, seed: int | None = None, offset: int = 0) -> None:
        self.device = device
        self.offset = offset
        self._shared = torch.Generator(device=device)
        if seed is None:
            self._shared.seed()
        else:
            self._shared.manual_seed(generator_seed(seed))
        self._own: dict[str, torch.Generator] = {}

    def forget(self, keys: Sequence[str]) -> None:
        for k in keys:
            self._own.pop(k, None)

    def one_each(self, rows: Sequence[Seeded]) -> torch.Tensor:
        """[len(rows)] U[0, 1): one per row, from its own generator when seeded, else the shared one."""
        n_shared = sum(r.seed is None for r in rows)
        shared = iter(torch.rand(n_shared, generator=self._shared, device=self.device).tolist() if n_shared else ())
        return torch.tensor([next(shared) if r.seed is None else
                             torch.rand(1, generator=self._generator(r), device=self.device).item() for r in rows],
                            dtype=torch.float32, device=self.device)

    def for_row(self, row: Seeded, n: int) -> torch.Tensor:
        """[n] U[0, 1) from the row's own generator when seeded, else the shared one."""
        g = self._generator(row) if row.seed is not None else self._shared
        return torch.rand(n, generator=g, device=self.device)

    def _generator(self, row: Seeded) -> torch.Generator:
        g = self._own.get(row.req_id)
        if g is None:
            assert row.seed is not None
            g = torch.Generator(device=self.device)
            g.manual_seed(generator_seed(row.seed, row.sample_index, self.offset))
            self._own[row.req_id] = g
        return g
