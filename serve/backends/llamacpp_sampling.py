"""The llama.cpp engine's sampling: the shared sampler (serve/sampling, the native engine's) over every
row llama.cpp computed logits for in one step, read in place from llama.cpp's own buffer.

Rows of sequences that verify prompt-lookup drafts go through `Sampler.verify` (greedy: drafts kept
while they equal the argmax; sampled: exact point-draft rejection sampling); the others through one
batched call, grammar-constrained ones with their masks applied or checked by the sampler.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from serve.engine.batch import SampledToken
from serve.sampling import DraftGroup, Sampler, SampleRow
from serve.sampling_params import SamplingParams
from serve.structured.matcher import GrammarMatcher
from serve.structured.rows import MatcherRows


@dataclass(frozen=True)
class ToSample:
    """One sequence's logits rows of this step: `row` and, with drafts, the len(drafts) rows after it."""

    key: str  # the sample's own key (its generator)
    params: SamplingParams
    prompt: Sequence[int]
    output: Sequence[int]  # tokens emitted so far (penalties count them)
    sample_index: int
    row: int
    drafts: Sequence[int] = ()
    matcher: GrammarMatcher | None = None  # never with drafts: constrained jobs do not speculate


class StepSampler:
    def __init__(self, logits_ith: Callable[[int], object], n_vocab: int, logprobs_mode: str,
                 grammar_vocab: Callable[[], int]) -> None:
        self._logits_ith = logits_ith  # llama_get_logits_ith: the float* of a batch row's logits
        self.n_vocab = n_vocab
        self._grammar_vocab = grammar_vocab
        self.sampler = Sampler("cpu", logprobs_mode=logprobs_mode)

    @staticmethod
    def run_on_this_thread() -> None:
        """Call once on the engine thread: its torch ops then use no OpenMP helper threads (the count
        is the calling thread's own setting). A step's rows are small, and helpers left spinning after
        each op would compete with llama.cpp's threads in the next decode."""
        torch.set_num_threads(1)

    def forget(self, key: str) -> None:
        self.sampler.forget([key])

    def sample(self, seqs: Sequence[ToSample]) -> list[list[SampledToken]]:
        """Per sequence: one token, or the accepted drafts plus one."""
        out: dict[int, list[SampledToken]] = {}
        plain = [i for i, s in enumerate(seqs) if not s.drafts]
        if plain:
            ps = [seqs[i] for i in plain]
            grammars = {j: MatcherRows(s.matcher, [], self._grammar_vocab()) for j, s in enumerate(ps)
                        if s.matcher is not None}
            toks = self.sampler(self.logits([s.row for s in ps]), [_row(s, 0) for s in ps], grammars,
                                scratch=False)
            out.update({i: [t] for i, t in zip(plain, toks, strict=True)})
        spec = [i for i, s in enumerate(seqs) if s.drafts]
        if spec:
            ss = [seqs[i] for i in spec]
            rows = [s.row + j for s in ss for j in range(len(s.drafts) + 1)]
            sample_rows = [_row(s, j) for s in ss for j in range(len(s.drafts) + 1)]
            groups = [DraftGroup(list(s.drafts)) for s in ss]
            toks = self.sampler.verify(self.logits(rows), sample_rows, groups, scratch=False)
            out.update(dict(zip(spec, toks, strict=True)))
        return [out[i] for i in range(len(seqs))]

    def logits(self, rows: list[int]) -> torch.Tensor:
        """[len(rows), V] float32 over llama.cpp's buffer: a view, no copy, when the rows lie one after
        another there (the sampled rows of one decode do), else a stacked copy. llama.cpp owns the
        buffer, so the sampler copies before editing it (scratch=False)."""
        addrs = [ctypes.cast(self._logits_ith(r), ctypes.c_void_p).value or 0 for r in rows]
        stride = self.n_vocab * ctypes.sizeof(ctypes.c_float)
        if all(a == addrs[0] + i * stride for i, a in enumerate(addrs)):
            return torch.from_numpy(_floats(addrs[0], (len(rows), self.n_vocab)))
        return torch.stack([torch.from_numpy(_floats(a, (self.n_vocab,))) for a in addrs])


def _floats(addr: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)), shape=shape)


def _row(s: ToSample, j: int) -> SampleRow:
    """Row j of a sequence: the drafts before it count as output (penalties), as in the native engine."""
    output = [*s.output, *s.drafts[:j]] if j else s.output
    return SampleRow(s.key, s.params, s.prompt, output, s.sample_index)
