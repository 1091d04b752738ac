"""int8 weight-only quantization at load: per-output-channel symmetric, PyTorch's `_weight_int8pack_mm`.

Any float checkpoint can be served this way (`quant="int8"`): the float rows are collected per
layer, then each output row n gets scale[n] = max|W[n, :]| / 127 and codes round(W / scale) in
[-127, 127]. On CPU the matmul reads int8 weights (half the bytes of bf16) and applies the scales
to the output; elsewhere, or with `int8_reference`, it dequantizes and calls F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serve.layers.quant.base import register_quant_method


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] float -> (codes [N, K] int8, scales [N] float32), w ~= codes * scales[:, None]."""
    amax = w.float().abs().amax(dim=1)
    scales = torch.where(amax == 0, torch.ones_like(amax), amax / 127.0)
    codes = torch.round(w.float() / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


class Int8ReferenceMethod:
    name = "int8_reference"

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       params_dtype: torch.dtype) -> None:
        # Float staging rows live only until finalize; f32 so quantization sees the checkpoint's values.
        layer._staging = torch.empty(out_features, in_features, dtype=torch.float32)
        layer._act_dtype = params_dtype

    def load_rows(self, layer: nn.Module, rows: torch.Tensor, row_offset: int) -> None:
        if not isinstance(rows, torch.Tensor):
            raise ValueError("int8 quantizes float weights at load; this checkpoint is already quantized")
        staging = layer._staging
        if rows.shape[1] != staging.shape[1] or row_offset + rows.shape[0] > staging.shape[0]:
            raise ValueError(f"weight rows {tuple(rows.shape)} at offset {row_offset} do not fit {tuple(staging.shape)}")
        staging[row_offset:row_offset + rows.shape[0]].copy_(rows)

    def finalize(self, layer: nn.Module) -> None:
        codes, scales = quantize_int8(layer._staging)
        del layer._staging
        layer.register_buffer("codes", codes)
        layer.register_buffer("scales", scales.to(layer._act_dtype))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = layer.codes.to(x.dtype) * layer.scales.to(x.dtype)[:, None]
        return F.linear(x, w)


class Int8Method(Int8ReferenceMethod):
    name = "int8"

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().apply(layer, x)
        lead = x.shape[:-1]
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), layer.codes, layer.scales.to(x.dtype))
        return y.reshape(*lead, y.shape[-1])


register_quant_method("int8", Int8Method)
register_quant_method("int8_reference", Int8ReferenceMethod)
