"""Bias-free linear layers whose weight may be several stacked shards (fused QKV, fused gate/up).

Fusing shards into one matmul matters on CPU at small batch: one kernel call streams the input once
and pays the dispatch overhead once instead of two or three times.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from serve.layers.quant.base import QuantMethod


class Linear(nn.Module):
    """y = x @ W.T with W: [sum(shard_sizes), in_features]; storage and matmul belong to `quant`."""

    def __init__(self, in_features: int, shard_sizes: Sequence[int], quant: QuantMethod,
                 params_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features = in_features
        self.shard_sizes = tuple(shard_sizes)
        self.out_features = sum(self.shard_sizes)
        self.quant = quant
        self._offsets = [sum(self.shard_sizes[:i]) for i in range(len(self.shard_sizes))]
        quant.create_weights(self, in_features, self.out_features, params_dtype)

    def load_shard(self, index: int, weight: torch.Tensor) -> None:
        """weight: [shard_sizes[index], in_features], any float dtype."""
        if tuple(weight.shape) != (self.shard_sizes[index], self.in_features):
            raise ValueError(f"shard {index} expects shape {(self.shard_sizes[index], self.in_features)}, "
                             f"got {tuple(weight.shape)}")
        self.quant.load_rows(self, weight, self._offsets[index])

    def finalize(self) -> None:
        self.quant.finalize(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in_features] -> [T, out_features]."""
        return self.quant.apply(self, x)
