"""GPTQ (Frantar et al., 2022): quantize a linear layer's weight column by column, pushing each
column's rounding error onto the columns not yet quantized so that the layer's OUTPUT on the
calibration inputs changes as little as possible.

The objective is ||W X - Q X||^2 over calibration inputs X ([K, n] columns of activations). Its
Hessian with respect to a row of W is H = 2 X X^T ([K, K]), shared by every output row. Quantizing
column j with error e_j is optimally compensated by W[:, j+1:] -= e_j / Hinv[j, j] * Hinv[j, j+1:],
where Hinv is the inverse Hessian restricted to the remaining columns. Taking Hinv's upper Cholesky
factor U gives every one of these restricted inverses at once (row j of U, scaled), which is what makes
the method O(K^3) once instead of once per column. Updates are applied lazily in blocks of columns so
that most of the work is one matmul per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serve.quantize.grid import QuantizedWeight, QuantSpec, grid_params, quantize_codes
from serve.quantize.threads import single_thread


class HessianAccumulator:
    """Running H = 2/n * sum_i x_i x_i^T over calibration rows."""

    def __init__(self, in_features: int) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """x: [..., in_features] activations entering the layer (any float dtype)."""
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        if n == 0:
            return
        total = self.count + n
        self.h.mul_(self.count / total)
        # the product in float32 (fast), the running sum in float64 (no drift over many batches)
        self.h.add_((x.T @ x).double(), alpha=2.0 / total)
        self.count = total


@dataclass(frozen=True)
class GPTQOptions:
    damp_percent: float = 0.01  # added to diag(H), as a fraction of its mean: keeps H invertible
    block_size: int = 128  # columns per lazy-update block
    act_order: bool = False  # quantize columns in order of decreasing diag(H)

    def __post_init__(self) -> None:
        if not 0.0 < self.damp_percent < 1.0:
            raise ValueError(f"damp_percent must be in (0, 1), got {self.damp_percent}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


def _inverse_hessian_factor(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, float32 [K, K]. Retries with more damping if H is
    numerically indefinite (can happen with few calibration tokens)."""
    damp = damp_percent * torch.mean(torch.diag(h))
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(hinv, upper=True).float()
        damp = damp * 10
    raise ValueError("Hessian is not positive definite even with heavy damping; use more calibration data")


def column_order(h: torch.Tensor, act_order: bool) -> torch.Tensor:
    """The order columns are quantized in: decreasing diag(H) with act-order, else 0..K-1."""
    return torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(h.shape[0])


def _prepare(w: torch.Tensor, h: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero out dead inputs (never active: diag(H) == 0) and apply the column order `perm`.
    Returns (W [N, K] f32 permuted, H permuted)."""
    w = w.float().clone()
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w[:, perm], h[perm][:, perm]


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, opts: GPTQOptions = GPTQOptions(),
                  order: torch.Tensor | None = None) -> QuantizedWeight:
    """w: [N, K] weight, h: [K, K] Hessian of its inputs -> QuantizedWeight in the original column order.

    With act_order, group j is the j-th run of `group_size` columns in quantization order, so a group's
    columns are scattered in the original order and g_idx says where each column belongs. `order`
    ([K] permutation) overrides `column_order(h)`: linears fused at load must share one g_idx.
    """
    n, k = w.shape
    if h.shape != (k, k):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not match weight in_features {k}")
    perm = column_order(h, opts.act_order) if order is None else order
    if perm.shape != (k,):
        raise ValueError(f"column order of shape {tuple(perm.shape)} does not match in_features {k}")
    with single_thread():
        return _gptq(w, h, spec, opts, perm)


def _gptq(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, opts: GPTQOptions, perm: torch.Tensor) -> QuantizedWeight:
    n, k = w.shape
    g = spec.effective_group(k)
    w, h = _prepare(w, h, perm)
    u = _inverse_hessian_factor(h, opts.damp_percent)
    codes = torch.zeros(n, k, dtype=torch.int32)
    scales: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    for b0 in range(0, k, opts.block_size):
        b1 = min(b0 + opts.block_size, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:  # a new group: its grid comes from the already-compensated weights
                upcoming = torch.cat([wb[:, i:], w[:, b1:]], dim=1)[:, :g]
                s, z = grid_params(upcoming, spec)
                scales.append(s)
                zeros.append(z)
            q = quantize_codes(wb[:, i:i + 1], scales[-1], zeros[-1], spec.maxq)
            codes[:, col] = q[:, 0]
            deq = scales[-1] * (q[:, 0] - zeros[-1]).float()
            e = (wb[:, i] - deq) / u[col, col]
            wb[:, i:] -= e[:, None] * u[col, col:b1][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    inv = torch.argsort(perm)
    g_idx = (torch.arange(k) // g).to(torch.int32)[inv]
    return QuantizedWeight(codes[:, inv].contiguous(), torch.stack(scales), torch.stack(zeros), g_idx)
