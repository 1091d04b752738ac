"""Q8_0 at load (quant method "q8_0"): float rows -> int8 codes in 32-weight blocks with an f16 scale
each (ggml's Q8_0 rule), run by the AVX2 block kernel on CPU (serve/kernels/cpu, int8 activations
per 32-block). Blocks track local ranges, so it is closer to float than per-channel int8. Without
the kernels (other CPUs, CUDA) the layer keeps the dequantized weight and uses F.linear: the
reference the kernel is tested against.

Also what a GPTQ checkpoint's tied vocab projection runs with on such CPUs (the checkpoint leaves it
in float; at batch 1 it is the largest single matmul of the step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serve.layers.quant.base import method_for_role, register_quant_method, register_tied_head
from serve.layers.quant.blocks import interleave, quantize_q8
from serve.layers.quant.int8 import Int8ReferenceMethod


def block_kernels_here() -> bool:
    """The AVX2 block kernels run where layers are being built (the default device is a CPU)."""
    if torch.get_default_device().type != "cpu":
        return False
    from serve.kernels import cpu

    return cpu.available()


class Q8BlockMethod(Int8ReferenceMethod):  # float staging rows as int8's
    name = "q8_0"

    def finalize(self, layer: nn.Module) -> None:
        w = quantize_q8(layer._staging)
        del layer._staging
        if block_kernels_here():
            p = interleave(w)
            layer.block_call = (torch.ops.sluice_cpu.q8_linear, (p.qs, p.d, p.n))
        else:
            layer.register_buffer("weight", w.dequantize().to(layer._act_dtype))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        call = getattr(layer, "block_call", None)
        if call is None or x.device.type != "cpu":
            return F.linear(x, layer.weight)
        lead = x.shape[:-1]
        y = call[0](x.reshape(-1, x.shape[-1]), *call[1])
        return y.reshape(*lead, y.shape[-1])


register_quant_method("q8_0", Q8BlockMethod)
# At-load methods quantize the tied head like any other layer (a role override may change it).
for _name in ("int8", "int8_reference", "int8_bf16act", "w8a8", "w8a8_reference", "q8_0"):
    register_tied_head(_name, lambda n=_name: method_for_role(n, "lm_head"))
register_tied_head("gguf", lambda: "gguf")  # the embedding's own Q4/Q8 blocks (gguf_int4_weights)
register_tied_head("gptq", lambda: "q8_0" if block_kernels_here() else None)
