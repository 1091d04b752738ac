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

from collections.abc import Callable, Sequence
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
class Slice:
    """Each row's best tokens, best first: vals [n, K] float32 logits (-inf: dropped), ids [n, K] int64."""

    vals: torch.Tensor
    ids: torch.Tensor

    def scatter(self, vocab: int) -> torch.Tensor:
        """[n, vocab] logits: the slice's values at their ids, -inf elsewhere."""
        out = torch.full((self.vals.shape[0], vocab), NEG_INF, dtype=self.vals.dtype, device=self.vals.device)
        return out.scatter_(1, self.ids, self.vals)


def top_k_top_p(logits: torch.Tensor, top_k: Sequence[int], top_p: Sequence[float]) -> Slice:
    """Truncate rows that each use top-k or top-p. logits [n, V]; top_k[i] (0 = off), top_p[i] (1.0 =
    off). Returns the survivors as a Slice.

    Only a top slice is sorted, never the whole vocabulary (a full sort of 49k logits costs ~4 ms on a
    core, topk(64) ~0.06 ms): rows with top-k need their k best; rows without it the fewest best that
    hold top_p of the mass, found by growing the slice 8x until every such row has enough. The knobs
    are Python numbers so that the common cases (one kind of cut) skip the others' tensor work.
    """
    n, vocab = logits.shape
    ks = [min(k, vocab) if k > 0 else 0 for k in top_k]
    whole = [i for i in range(n) if not ks[i]]  # top-p over the whole distribution
    pick = _rows(whole, n, logits.device)
    size = min(vocab, max(ks + [_FIRST_SLICE if whole else 0]))
    full: torch.Tensor | None = None  # the whole rows' probabilities [len(whole), V]
    while True:
        vals, ids = _best(logits, size)
        if size == vocab or not whole:
            break
        if full is None:
            full = torch.softmax(pick(logits), dim=-1)
        if bool((full.gather(1, pick(ids)).sum(dim=-1) >= torch.tensor([top_p[i] for i in whole])).all()):
            break
        size = min(vocab, size * 8)
    if any(0 < k < size for k in ks):
        rank = torch.arange(size, device=logits.device).unsqueeze(0)
        vals = vals.masked_fill(rank >= torch.tensor([k or size for k in ks], device=logits.device).unsqueeze(1), NEG_INF)
    if all(p >= 1.0 for p in top_p):
        return Slice(vals, ids)
    # top-p's mass: renormalised over what top-k kept (vLLM's order), or of the whole distribution.
    probs = torch.softmax(vals, dim=-1)
    if full is not None:
        probs[whole] = full.gather(1, pick(ids))
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
    p = torch.tensor([q if q < 1.0 else 2.0 for q in top_p], device=logits.device)  # 1.0 = off, despite rounding
    drop = mass_before >= p.unsqueeze(1)
    drop[:, 0] = False  # the best token always survives
    return Slice(vals.masked_fill(drop, NEG_INF), ids)


def _rows(rows: list[int], n: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Selects `rows` of an [n, ...] tensor; all of them: the tensor itself (indexing copies, ~15 us)."""
    if len(rows) == n:
        return lambda t: t
    idx = torch.tensor(rows, device=device)
    return lambda t: t.index_select(0, idx)


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
