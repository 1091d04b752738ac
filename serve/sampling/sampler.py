"""Sampler: the batched pipeline of serve/sampling (order and logprobs semantics in __init__.py).

All transforms run on the whole batch at once; rows that do not use a knob pass through unchanged.
When every row is greedy with no bias, penalty, logprobs or grammar to mask first, sampling is one
argmax. Sampled rows that truncate (top_k / top_p) draw from a sorted top slice, never from a sorted
vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from serve.engine.batch import SampledToken
from serve.sampling import transforms as tf
from serve.sampling.constraints import Constraint, apply_masks, masked_rows, split
from serve.sampling.logprobs import LOGPROBS_MODES, RAW, check_mode, tokens_with_logprobs
from serve.sampling.rejection import rejection_sample
from serve.sampling.seeds import Generators
from serve.sampling_params import SamplingParams

__all__ = ["LOGPROBS_MODES", "DraftGroup", "SampleRow", "Sampler"]


@dataclass(frozen=True)
class SampleRow:
    """One logits row to sample."""

    req_id: str  # the key of per-sample state (its generator): distinct for each of n samples
    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]  # outputs before this row's token (drafts being verified included)
    sample_index: int = 0

    @property
    def seed(self) -> int | None:
        return self.params.seed


@dataclass(frozen=True)
class DraftGroup:
    """k drafts of one sequence, verified over its k + 1 consecutive logits rows."""

    drafts: Sequence[int]
    draft_probs: torch.Tensor | None = None  # [k, V] the q they were drawn from; None: point masses

    @property
    def num_rows(self) -> int:
        return len(self.drafts) + 1


class Sampler:
    def __init__(self, device: torch.device | str = "cpu", seed: int | None = None, seed_offset: int = 0,
                 logprobs_mode: str = RAW) -> None:
        self.device = torch.device(device)
        self.logprobs_mode = check_mode(logprobs_mode)
        # seed_offset: a draft model's sampler must not replay the target's stream.
        self.generators = Generators(self.device, seed, seed_offset)
        self.masked_rows = 0  # rows that got a full grammar mask (masked first, or refused a token)
        self.checked_rows = 0  # constrained rows sampled first and checked

    def forget(self, req_ids: Sequence[str]) -> None:
        """Drop per-request state of finished or aborted requests."""
        self.generators.forget(req_ids)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow],
                 constraints: Mapping[int, Constraint] | None = None, *, scratch: bool = True
                 ) -> list[SampledToken]:
        """One token per row. logits: [N, V] float32, row i for rows[i]; modified in place, unless
        scratch=False (a buffer someone else owns: copied before the first edit). constraints: a
        sequence's grammar by its first row (one row each here; a verify group goes to `verify`)."""
        _check(logits, rows)
        lazy, eager = split([r.params for r in rows], constraints or {})
        if not eager and all(_plain_greedy(r.params) for r in rows):
            chosen = tf.argmax(logits) if rows else []
            self._recheck(rows, lazy, chosen, {i: logits[i:i + 1] for i in lazy})
            return [SampledToken(t) for t in chosen]
        if not scratch and (eager or any(r.params.logit_bias or r.params.uses_penalties for r in rows)):
            logits = logits.clone()  # edited in place below; temperature and truncation work on copies
        self._mask(logits, eager)
        want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        raw = self._raw_logprobs(logits, want)
        self._bias_and_penalties(logits, rows)
        chosen = tf.argmax(logits)  # the greedy rows' answer; sampled rows are drawn below
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        keep = {i for i in sampled if i in lazy or (raw is None and rows[i].params.logprobs is not None)}
        processed = self._draw(logits, rows, sampled, chosen, keep) if sampled else {}
        rows_of = {i: processed.get(i, logits[i:i + 1]) for i in [*lazy, *want]}
        self._recheck(rows, lazy, chosen, rows_of)
        return self._with_logprobs(rows, chosen, raw if raw is not None else {i: rows_of[i] for i in want})

    def verify(self, logits: torch.Tensor, rows: Sequence[SampleRow], groups: Sequence[DraftGroup],
               constraints: Mapping[int, Constraint] | None = None, *, scratch: bool = True
               ) -> list[list[SampledToken]]:
        """Speculative verification: per group (consecutive rows, in order) the accepted drafts plus one
        token. Greedy groups keep drafts while they equal the argmax; sampled ones go through rejection
        sampling (rejection.py), exact for point-mass drafts and for drafts drawn from draft_probs."""
        _check(logits, rows)
        if sum(g.num_rows for g in groups) != len(rows):
            raise ValueError(f"draft groups cover {sum(g.num_rows for g in groups)} rows, not {len(rows)}")
        if not scratch:
            logits = logits.clone()
        self._mask(logits, dict(constraints or {}))
        want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        raw = self._raw_logprobs(logits, want)
        self.process(logits, rows)
        source = raw if raw is not None else {i: logits[i:i + 1] for i in want}
        out: list[list[SampledToken]] = []
        start = 0
        for g in groups:
            tokens = self._verify_group(logits[start:start + g.num_rows], rows[start], g)
            got = range(start, start + len(tokens))
            out.append(self._with_logprobs([rows[i] for i in got], tokens,
                                           {i - start: source[i] for i in got if i in source}))
            start += g.num_rows
        return out

    def propose(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> tuple[list[int], list[torch.Tensor | None]]:
        """Draft tokens (a draft model's): the argmax for greedy rows, a draw from the processed
        distribution q for sampled ones. Returns the tokens and q [V] of each sampled row (else None)."""
        _check(logits, rows)
        self.process(logits, rows)
        chosen = tf.argmax(logits)
        q: list[torch.Tensor | None] = [None] * len(rows)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled:
            probs = torch.softmax(logits[sampled], dim=-1)
            u = self.generators.one_each([rows[i] for i in sampled])
            for j, (i, t) in enumerate(zip(sampled, tf.draw(probs, u).tolist(), strict=True)):
                chosen[i], q[i] = int(t), probs[j]
        return chosen, q

    def process(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
        """In place: logits [N, V] become each row's processed logits (softmax = what is drawn from)."""
        self._bias_and_penalties(logits, rows)
        sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
        if not sampled:
            return
        block = self._temper(logits, sampled, [rows[i].params for i in sampled])
        cut = _truncating([rows[i].params for i in sampled])
        if cut:
            sl = self._truncate(block[cut], [rows[sampled[j]].params for j in cut])
            block[cut] = sl.scatter(logits.shape[1])
        logits.index_copy_(0, torch.tensor(sampled, device=self.device), block)

    # ---- the steps ------------------------------------------------------------------------------
    def _mask(self, logits: torch.Tensor, constraints: Mapping[int, Constraint]) -> None:
        apply_masks(logits, constraints)
        self.masked_rows += sum(c.num_rows for c in constraints.values())

    def _raw_logprobs(self, logits: torch.Tensor, want: list[int]) -> dict[int, torch.Tensor] | None:
        """Raw mode: each row's log-softmax [1, V] now, before any processing (None: processed mode)."""
        if self.logprobs_mode != RAW:
            return None
        if not want:
            return {}
        logp = torch.log_softmax(logits[want], dim=-1)
        return {i: logp[k:k + 1] for k, i in enumerate(want)}

    def _bias_and_penalties(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
        tf.apply_logit_bias(logits, [r.params.logit_bias for r in rows])
        pen = [i for i, r in enumerate(rows) if r.params.uses_penalties]
        if not pen:
            return
        idx = torch.tensor(pen, device=self.device)
        prs = [rows[i] for i in pen]
        block = logits.index_select(0, idx)
        prompt = tf.token_counts([r.prompt_token_ids if r.params.repetition_penalty != 1.0 else () for r in prs],
                                 logits.shape[1], self.device)
        output = tf.token_counts([r.output_token_ids for r in prs], logits.shape[1], self.device)
        tf.apply_penalties(block, prompt, output, self._vec([r.params.repetition_penalty for r in prs]),
                           self._vec([r.params.frequency_penalty for r in prs]),
                           self._vec([r.params.presence_penalty for r in prs]))
        logits.index_copy_(0, idx, block)

    def _temper(self, logits: torch.Tensor, rows: list[int], params: list[SamplingParams]) -> torch.Tensor:
        """A new block of the given rows: temperature, then min_p."""
        temps = [p.temperature for p in params]
        t: float | torch.Tensor = temps[0] if len(set(temps)) == 1 else self._vec(temps).unsqueeze(1)
        if len(rows) == logits.shape[0]:
            block = logits / t
        else:
            block = logits.index_select(0, torch.tensor(rows, device=self.device)).div_(t)
        if any(p.min_p > 0 for p in params):
            tf.apply_min_p(block, self._vec([p.min_p for p in params]))
        return block

    @staticmethod
    def _truncate(block: torch.Tensor, params: list[SamplingParams]) -> tf.Slice:
        return tf.top_k_top_p(block, [max(p.top_k, 0) for p in params], [p.top_p for p in params])

    def _draw(self, logits: torch.Tensor, rows: Sequence[SampleRow], sampled: list[int], chosen: list[int],
              keep: set[int]) -> dict[int, torch.Tensor]:
        """Draw the sampled rows into `chosen`; returns the processed logits [1, V] of the rows in `keep`."""
        params = [rows[i].params for i in sampled]
        block = self._temper(logits, sampled, params)
        u = self.generators.one_each([rows[i] for i in sampled])
        cut = _truncating(params)
        whole = [j for j in range(len(sampled)) if j not in set(cut)]
        kept: dict[int, torch.Tensor] = {}
        if whole:
            wb, wu = (block, u) if not cut else (block[whole], u[whole])
            for j, t in zip(whole, tf.draw(torch.softmax(wb, dim=-1), wu).tolist(), strict=True):
                chosen[sampled[j]] = int(t)
            kept.update({sampled[j]: wb[m:m + 1] for m, j in enumerate(whole) if sampled[j] in keep})
        if cut:
            sl = self._truncate(block if not whole else block[cut], [params[j] for j in cut])
            for j, t in zip(cut, sl.draw(u if not whole else u[cut]), strict=True):
                chosen[sampled[j]] = t
            if any(sampled[j] in keep for j in cut):
                scattered = sl.scatter(logits.shape[1])
                kept.update({sampled[j]: scattered[m:m + 1] for m, j in enumerate(cut) if sampled[j] in keep})
        return kept

    def _recheck(self, rows: Sequence[SampleRow], lazy: Mapping[int, Constraint], chosen: list[int],
                 processed: Mapping[int, torch.Tensor]) -> None:
        """Lazily constrained rows: keep the token the grammar confirms, else mask and choose again
        (exact: constraints.py). processed[i]: row i's processed logits [1, V], not modified."""
        refused = []
        for i, c in lazy.items():
            self.checked_rows += 1
            token = c.forced()
            if token is not None:
                chosen[i] = token
            elif not c.confirms(chosen[i]):
                refused.append(i)
        if not refused:
            return
        self.masked_rows += len(refused)
        block = masked_rows(torch.cat([processed[i] for i in refused]), [lazy[i] for i in refused])
        greedy = [j for j, i in enumerate(refused) if rows[i].params.greedy]
        best = tf.argmax(block) if greedy else []
        sampled = [j for j, i in enumerate(refused) if not rows[i].params.greedy]
        if sampled:
            probs = torch.softmax(block if not greedy else block[sampled], dim=-1)
            draws = tf.draw(probs, self.generators.one_each([rows[refused[j]] for j in sampled])).tolist()
            best = best or [0] * len(refused)
            for j, t in zip(sampled, draws, strict=True):
                best[j] = int(t)
        for j, i in enumerate(refused):
            chosen[i] = best[j]

    def _verify_group(self, processed: torch.Tensor, row: SampleRow, g: DraftGroup) -> list[int]:
        if row.params.greedy:
            best = tf.argmax(processed)
            n = next((j for j, d in enumerate(g.drafts) if d != best[j]), len(g.drafts))
            return [*g.drafts[:n], best[n]]
        drafts = torch.tensor(list(g.drafts), dtype=torch.int64, device=self.device)
        q = g.draft_probs[:len(g.drafts)].to(self.device) if g.draft_probs is not None else None
        u = self.generators.for_row(row, g.num_rows)
        return rejection_sample(torch.softmax(processed, dim=-1), drafts, q, u)

    def _with_logprobs(self, rows: Sequence[SampleRow], chosen: list[int], source: Mapping[int, torch.Tensor]
                       ) -> list[SampledToken]:
        """source: for each row that wants logprobs, its log-probs [1, V] (raw mode) or its processed
        logits [1, V] (processed mode)."""
        out = [SampledToken(t) for t in chosen]
        want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        if not want:
            return out
        logp = torch.cat([source[i] for i in want])
        if self.logprobs_mode != RAW:
            logp = torch.log_softmax(logp, dim=-1)
        toks = tokens_with_logprobs(logp, [int(rows[i].params.logprobs or 0) for i in want], [chosen[i] for i in want])
        for i, tok in zip(want, toks, strict=True):
            out[i] = tok
        return out

    def _vec(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)


def _check(logits: torch.Tensor, rows: Sequence[SampleRow]) -> None:
    if logits.shape[0] != len(rows):
        raise ValueError(f"{logits.shape[0]} logits rows for {len(rows)} sample rows")


def _plain_greedy(p: SamplingParams) -> bool:
    return p.greedy and not p.uses_penalties and not p.logit_bias and p.logprobs is None


def _truncating(params: Sequence[SamplingParams]) -> list[int]:
    return [j for j, p in enumerate(params) if p.top_k > 0 or p.top_p < 1.0]
