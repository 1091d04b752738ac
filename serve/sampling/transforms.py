"""Batched logits transforms of the sampler. Every function works on a [N, V] float32 block.

Semantics (one row = one request's next-token distribution):
  * logit_bias: logits[t] += bias[t].
  * repetition_penalty r (HF / CTRL): for every token seen in prompt or output, a positive logit is
    divided by r and a negative one multiplied by r.
  * frequency_penalty f, presence_penalty p (OpenAI): logits[t] -= f * count_out(t) + p * [count_out(t) > 0],
    counting output tokens only.
  * temperature T > 0: logits / T.
  * min_p m: drop tokens whose probability is below m * the top probability, i.e. whose logit is below
    max + log(m) (a threshold on the logits: no softmax needed).
  * top_k k: keep the k most likely tokens; then top_p q: keep the smallest most-likely set whose mass,
    renormalised after min_p and top_k, reaches q (the token that crosses q is kept).
Dropped tokens get -inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NEG_INF = float("-inf")
_FIRST_SLICE = 64  # top-p without top-k first looks at this many best tokens, then 8x more each time
_TOPK_MAX = 512  # slices up to this size come from torch.topk, larger ones on the CPU from numpy
_BLOCK = 256  # inverse-CDF draws: cumulative sums over blocks of this many tokens, then inside one


def apply_logit_bias(logits: torch.Tensor, biases: Sequence[dict[int, float]]) -> None:
    """In place. biases[i] is row i's {token_id: bias}; ids outside the vocabulary are ignored."""
    vocab = logits.shape[1]
    for i, bias in enumerate(biases):
        ids = [t for t in bias if t < vocab] if bias else []
        if ids:
            idx = torch.tensor(ids, dtype=torch.int64, device=logits.device)
            vals = torch.tensor([bias[t] for t in ids], dtype=logits.dtype, device=logits.device)
            logits[i].index_add_(0, idx, vals)


def token_counts(histories: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[N, V] float32 counts of each token id in each row's history (ids >= vocab ignored)."""
    counts = torch.zeros(len(histories), vocab, dtype=torch.float32, device=device)
    for i, hist in enumerate(histories):
        if hist:
            ids = torch.tensor(hist, dtype=torch.int64, device=device)
            ids = ids[ids < vocab]
            counts[i].index_add_(0, ids, torch.ones(ids.shape[0], device=device))
    return counts


def apply_penalties(logits: torch.Tensor, prompt_counts: torch.Tensor, output_counts: torch.Tensor,
                    repetition: torch.Tensor, frequency: torch.Tensor, presence: torch.Tensor) -> None:
    """In place. logits, *_counts: [N, V]; repetition, frequency, presence: [N] float32."""
    seen = (prompt_counts + output_counts) > 0
    rep = repetition.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalised, logits))
    logits -= frequency.unsqueeze(1) * output_counts + presence.unsqueeze(1) * (output_counts > 0).float()


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> None:
    """In place; rows with min_p == 0 are unchanged (log 0 = -inf keeps everything). min_p: [N]."""
    floor = logits.amax(dim=-1, keepdim=True) + torch.log(min_p).unsqueeze(1)
    logits.masked_fill_(logits < floor, NEG_INF)


@dataclass(frozen=True)
class _Part:
    """Some rows' best tokens, best first, all of one width: vals [m, K] float32 logits (-inf:
    dropped), ids [m, K] int64; probs: each token's share of its row's whole distribution (None:
    top-p renormalises over the slice, as after top-k)."""

    rows: list[int]
    vals: torch.Tensor
    ids: torch.Tensor
    probs: torch.Tensor | None = None


@dataclass(frozen=True)
class Slice:
    """The survivors of truncation for n rows, in parts of one width each (a row whose nucleus spans
    thousands of tokens does not widen the others)."""

    parts: list[_Part]
    n: int

    def scatter(self, vocab: int) -> torch.Tensor:
        """[n, vocab] logits: the survivors' values at their ids, -inf elsewhere."""
        device = self.parts[0].vals.device
        out = torch.full((self.n, vocab), NEG_INF, device=device)
        for p in self.parts:
            rows = torch.full((len(p.rows), vocab), NEG_INF, device=device).scatter_(1, p.ids, p.vals)
            out.index_copy_(0, torch.tensor(p.rows, device=device), rows)
        return out

    def draw(self, uniforms: torch.Tensor) -> list[int]:
        """One token per row from softmax of its survivors; uniforms: [n] in [0, 1)."""
        out = [0] * self.n
        for p in self.parts:
            picks = draw(torch.softmax(p.vals, dim=-1), _select(uniforms, p.rows))
            for r, t in zip(p.rows, p.ids.gather(1, picks.unsqueeze(1)).squeeze(1).tolist(), strict=True):
                out[r] = t
        return out


def top_k_top_p(logits: torch.Tensor, top_k: Sequence[int], top_p: Sequence[float]) -> Slice:
    """Truncate rows that each use top-k or top-p. logits [n, V]; top_k[i] (0 = off), top_p[i] (1.0 =
    off). Returns the survivors as a Slice.

    Only a top slice is sorted, never the whole vocabulary (a full sort of 49k logits costs ~4 ms on a
    core, topk(64) ~0.06 ms): rows with top-k need their k best; rows without it the fewest best that
    hold top_p of the mass, found by growing each row's slice until it has enough.
    """
    n, vocab = logits.shape
    ks = [min(k, vocab) if k > 0 else 0 for k in top_k]
    parts: list[_Part] = []
    with_k = [i for i in range(n) if ks[i]]
    if with_k:
        vals, ids = _best(_select(logits, with_k), max(ks[i] for i in with_k))
        if len({ks[i] for i in with_k}) > 1:
            rank = torch.arange(vals.shape[1], device=logits.device).unsqueeze(0)
            vals = vals.masked_fill(rank >= torch.tensor([ks[i] for i in with_k], device=logits.device).unsqueeze(1),
                                    NEG_INF)
        parts.append(_Part(with_k, vals, ids))
    whole = [i for i in range(n) if not ks[i]]  # top-p over the whole distribution
    if whole:
        parts += _nucleus_parts(logits, whole, top_p)
    return Slice([_cut_top_p(part, [top_p[i] for i in part.rows]) for part in parts], n)


def _nucleus_parts(logits: torch.Tensor, rows: list[int], top_p: Sequence[float]) -> list[_Part]:
    """For rows cut by top-p alone: the fewest best tokens (64, 512, 4096, 8192, ...) holding top_p of
    the mass, grown per row so that one flat row does not make the whole batch sort thousands."""
    x = _select(logits, rows)
    full = torch.softmax(x, dim=-1)
    vocab = x.shape[1]
    pending = list(range(len(rows)))
    size = min(vocab, _FIRST_SLICE)
    parts = []
    while pending:
        vals, ids = _best(_select(x, pending), size)
        probs = _select(full, pending).gather(1, ids)
        enough = [True] * len(pending) if size == vocab else \
            (probs.sum(dim=-1) >= torch.tensor([top_p[rows[j]] for j in pending])).tolist()
        done = [m for m, ok in enumerate(enough) if ok]
        if done:
            parts.append(_Part([rows[pending[m]] for m in done], _select(vals, done), _select(ids, done),
                               _select(probs, done)))
        pending = [j for j, ok in zip(pending, enough, strict=True) if not ok]
        size = min(vocab, size * (8 if size < _TOPK_MAX * 8 else 2))  # past 4096: sorting costs by size
    return parts


def _cut_top_p(part: _Part, top_p: list[float]) -> _Part:
    """top-p within a part's slices: keep the best tokens until their mass reaches p (the crossing one
    too), the mass renormalised over the slice (after top-k) or of the whole distribution."""
    if all(p >= 1.0 for p in top_p):
        return part
    probs = part.probs if part.probs is not None else torch.softmax(part.vals, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
    p = torch.tensor([q if q < 1.0 else 2.0 for q in top_p], device=probs.device)  # 1.0 = off, despite rounding
    drop = mass_before >= p.unsqueeze(1)
    drop[:, 0] = False  # the best token always survives
    return _Part(part.rows, part.vals.masked_fill(drop, NEG_INF), part.ids)


def _select(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows of t; all of them in order: t itself (indexing copies, ~15 us for a 49k row)."""
    if rows == list(range(t.shape[0])):
        return t
    return t.index_select(0, torch.tensor(rows, device=t.device))


def _best(logits: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `size` best logits of each row and their ids, best first."""
    if size >= logits.shape[1]:
        return torch.sort(logits, dim=-1, descending=True)
    if size <= _TOPK_MAX or logits.device.type != "cpu":
        return torch.topk(logits, size, dim=-1)
    # On the CPU torch.topk turns into a sort from k ~1024 on (0.4-0.7 ms for 49k logits); numpy's
    # introselect plus a sort of the k stays ~0.1 ms.
    x = logits.detach().numpy()
    ids = np.stack([_top_ids(row, size) for row in x])
    return torch.from_numpy(np.take_along_axis(x, ids, axis=1)), torch.from_numpy(ids)


def _top_ids(row: np.ndarray, size: int) -> np.ndarray:
    part = np.argpartition(-row, size - 1)[:size]
    return part[np.argsort(-row[part], kind="stable")]


def argmax(logits: torch.Tensor) -> list[int]:
    """The first index of each row's maximum. On the CPU numpy's vectorised argmax (~3 us for a 49k
    row) stands in for torch's, a scalar loop there (~30-40 us)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return logits.detach().numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()


def draw(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws. weights: [n, V] >= 0, any positive scale per row; uniforms: [n] in [0, 1).
    Returns [n] int64, always an index of positive weight: right=True finds the first cumulative sum
    past the target, and the target stays below the last one.

    Over a long row in two levels, sums of blocks then one block: one cumulative sum over a whole 49k
    vocabulary costs ~50 us, and a long float32 one drifts; the short cumulative sums run in float64."""
    n, vocab = weights.shape
    if vocab <= 4 * _BLOCK:
        cum = weights.double().cumsum(dim=-1)
        return torch.searchsorted(cum, uniforms.double().unsqueeze(1) * cum[:, -1:], right=True).squeeze(1)
    blocks = -(-vocab // _BLOCK)
    w = weights
    if blocks * _BLOCK != vocab:
        w = torch.nn.functional.pad(w, (0, blocks * _BLOCK - vocab))
    w = w.reshape(n, blocks, _BLOCK)
    cum = w.sum(dim=-1).double().cumsum(dim=-1)  # [n, blocks]
    target = uniforms.double().unsqueeze(1) * cum[:, -1:]
    b = torch.searchsorted(cum, target, right=True)  # a block of positive weight
    inner = w[torch.arange(n, device=weights.device), b.squeeze(1)].double().cumsum(dim=-1)  # [n, BLOCK]
    rest = target - torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), 0.0)
    # The block's float32 sum and its float64 cumulative sum may differ in the last bits: stay inside.
    rest = torch.minimum(rest, torch.nextafter(inner[:, -1:], torch.zeros_like(rest)))
    return (b * _BLOCK + torch.searchsorted(inner, rest, right=True)).squeeze(1)
