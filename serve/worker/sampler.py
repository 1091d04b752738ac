"""Batched sampling over the logits rows the scheduler asked for.

Pipeline per row: logit_bias -> repetition / frequency / presence penalties -> (temperature > 0:
temperature, min_p, top_k, top_p, random draw) | (temperature == 0: argmax). Logprobs are the
log-softmax of that processed distribution (dropped tokens have -inf and never appear in top
alternatives). All transforms run on the whole batch at once; rows that do not use a knob pass
through it unchanged. When every row is greedy with no bias, penalty or logprobs, sampling is one
argmax.

Randomness: a request with a seed gets its own torch.Generator seeded with seed + sample_index, kept
across steps until `forget`; unseeded requests draw from one shared generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serve.engine.batch import SampledToken
from serve.sampling_params import SamplingParams
from serve.worker import logits_processing as lp


@dataclass(frozen=True)
class SampleRow:
    """One logits row to sample."""

    req_id: str
    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]  # outputs before this row's token (drafts being verified included)
    sample_index: int = 0


class Sampler:
    def __init__(self, device: torch.device | str = "cpu", seed: int | None = None, seed_offset: int = 0) -> None:
        self.device = torch.device(device)
        # Added to every request seed: a draft model's sampler must not replay the target's stream.
        self.seed_offset = seed_offset
        self._shared = torch.Generator(device=self.device)
        if seed is None:
            self._shared.seed()
        else:
            self._shared.manual_seed(seed)
        self._generators: dict[str, torch.Generator] = {}

    def forget(self, req_ids: Sequence[str]) -> None:
        """Drop per-request state of finished or aborted requests."""
        for r in req_ids:
            self._generators.pop(r, None)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> list[SampledToken]:
        """logits: [N, V] float32, one row per entry of `rows` (modified in place) -> N SampledTokens."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"{logits.shape[0]} logits rows for {len(rows)} sample rows")
        if not rows:
            return []
        if all(_plain_greedy(r.params) for r in rows):
            return [SampledToken(int(t)) for t in logits.argmax(dim=-1).tolist()]
        self._process(logits, rows)
        chosen = self._choose(logits, rows)
        return self._with_logprobs(logits, rows, chosen)

    def process(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
        """In place: logits [N, V] become the processed distribution's logits (softmax = what is sampled)."""
        self._process(logits, rows)

    def draw_uniforms(self, row: SampleRow, n: int) -> torch.Tensor:
        """[n] U[0, 1) from the row's own generator when seeded, else the shared one."""
        g = self._generator(row) if row.params.seed is not None else self._shared
        return torch.rand(n, generator=g, device=self.device)

    def with_logprobs(self, logits: torch.Tensor, rows: Sequence[SampleRow], chosen: list[int]
                      ) -> list[SampledToken]:
        """SampledTokens for `chosen` given processed logits [N, V] (logprobs when a row asks)."""
        return self._with_logprobs(logits, rows, chosen)

    def _process(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
        """Bias and penalties on every row; temperature and truncation on the sampled rows."""
        lp.apply_logit_bias(logits, [r.params.logit_bias for r in rows])
        pen = [i for i, r in enumerate(rows) if r.params.uses_penalties]
        if pen:
            self._penalise(logits, [rows[i] for i in pen], torch.tensor(pen, device=self.device))
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if not sampled:
            return
        idx = torch.tensor(sampled, device=self.device)
        block = logits.index_select(0, idx)
        block /= self._vec([rows[i].params.temperature for i in sampled]).unsqueeze(1)
        if any(rows[i].params.min_p > 0 for i in sampled):
            lp.apply_min_p(block, self._vec([rows[i].params.min_p for i in sampled]))
        if any(rows[i].params.top_k > 0 or rows[i].params.top_p < 1.0 for i in sampled):
            top_k = torch.tensor([max(rows[i].params.top_k, 0) for i in sampled], device=self.device)
            lp.apply_top_k_top_p(block, top_k, self._vec([rows[i].params.top_p for i in sampled]))
        logits.index_copy_(0, idx, block)

    def _penalise(self, logits: torch.Tensor, rows: list[SampleRow], idx: torch.Tensor) -> None:
        vocab = logits.shape[1]
        block = logits.index_select(0, idx)
        prompt = lp.token_counts([r.prompt_token_ids if r.params.repetition_penalty != 1.0 else ()
                                  for r in rows], vocab, self.device)
        output = lp.token_counts([r.output_token_ids for r in rows], vocab, self.device)
        lp.apply_penalties(block, prompt, output, self._vec([r.params.repetition_penalty for r in rows]),
                           self._vec([r.params.frequency_penalty for r in rows]),
                           self._vec([r.params.presence_penalty for r in rows]))
        logits.index_copy_(0, idx, block)

    def _choose(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> list[int]:
        chosen = logits.argmax(dim=-1).tolist()
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled:
            idx = torch.tensor(sampled, device=self.device)
            probs = torch.softmax(logits.index_select(0, idx), dim=-1)
            draws = lp.sample_from_probs(probs, self._uniforms([rows[i] for i in sampled])).tolist()
            for i, t in zip(sampled, draws, strict=True):
                chosen[i] = int(t)
        return chosen

    def _uniforms(self, rows: Sequence[SampleRow]) -> torch.Tensor:
        """One U[0, 1) per row: from the request's own generator when seeded, else the shared one."""
        out = torch.rand(len(rows), generator=self._shared, device=self.device)
        for i, r in enumerate(rows):
            if r.params.seed is not None:
                out[i] = torch.rand(1, generator=self._generator(r), device=self.device)[0]
        return out

    def _generator(self, row: SampleRow) -> torch.Generator:
        g = self._generators.get(row.req_id)
        if g is None:
            g = torch.Generator(device=self.device)
            g.manual_seed((int(row.params.seed) + row.sample_index + self.seed_offset) % (1 << 63)
                          if self.seed_offset else int(row.params.seed) + row.sample_index)
            self._generators[row.req_id] = g
        return g

    def _with_logprobs(self, logits: torch.Tensor, rows: Sequence[SampleRow], chosen: list[int]
                       ) -> list[SampledToken]:
        out = [SampledToken(t) for t in chosen]
        want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        if not want:
            return out
        idx = torch.tensor(want, device=self.device)
        logp = torch.log_softmax(logits.index_select(0, idx), dim=-1)
        k_max = max(int(rows[i].params.logprobs or 0) for i in want)
        top_v, top_i = torch.topk(logp, k_max, dim=-1) if k_max else (None, None)
        picked = logp.gather(1, torch.tensor([[chosen[i]] for i in want], device=self.device)).squeeze(1).tolist()
        for j, i in enumerate(want):
            k = int(rows[i].params.logprobs or 0)
            top = tuple((t, v) for t, v in zip(top_i[j, :k].tolist(), top_v[j, :k].tolist(), strict=True)
                        if v != float("-inf")) if k else ()
            out[i] = SampledToken(chosen[i], float(picked[j]), top)
        return out

    def _vec(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)


def _plain_greedy(p: SamplingParams) -> bool:
    return p.greedy and not p.uses_penalties and not p.logit_bias and p.logprobs is None
