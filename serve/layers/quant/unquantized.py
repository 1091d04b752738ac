"""Dense weights in the model dtype (bf16 / f16 / f32); the matmul is torch's `F.linear`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serve.layers.quant.base import register_quant_method


class UnquantizedMethod:
    name = "none"

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       params_dtype: torch.dtype) -> None:
        weight = torch.empty(out_features, in_features, dtype=params_dtype)
        layer.register_parameter("weight", nn.Parameter(weight, requires_grad=False))

    def load_rows(self, layer: nn.Module, rows: torch.Tensor, row_offset: int) -> None:
        w = layer.weight
        if rows.shape[1] != w.shape[1] or row_offset + rows.shape[0] > w.shape[0]:
            raise ValueError(f"weight rows {tuple(rows.shape)} at offset {row_offset} do not fit {tuple(w.shape)}")
        w.data[row_offset:row_offset + rows.shape[0]].copy_(rows)

    def finalize(self, layer: nn.Module) -> None:
        return None

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight)


register_quant_method("none", UnquantizedMethod)
