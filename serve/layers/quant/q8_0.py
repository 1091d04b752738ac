"""Q8_0 at load (quant method "q8_0"): float rows -> int8 codes in 32-weight blocks with an f16 scale
each (ggml's Q8_0 rule), run by the AVX2 block kernel on CPU (kernels/sluice_kernels/cpu, int8 activations
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

from serve.layers.quant import block_call
from serve.layers.quant.base import method_for_role, register_quant_method, register_tied_head
from serve.layers.quant.block_call import block_kernels_here
from serve.layers.quant.blocks import interleave, quantize_q8
from serve.layers.quant.int8 import Int8ReferenceMethod


class Q8BlockMethod(Int8ReferenceMethod):  # float staging rows as int8's
    name = "q8_0"

    def finalize(self, layer: nn.Module) -> None:
        w = quantize_q8(layer._staging)
        del layer._staging
        if block_kernels_here():
            layer.block_call = block_call.kernel_call(interleave(w))
        else:
            layer.register_buffer("weight", w.dequantize().to(layer._act_dtype))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        call = getattr(layer, "block_call", None)
        if call is None or x.device.type != "cpu":
            return F.linear(x, layer.weight)
        return block_call.run(call, x)


register_quant_method("q8_0", Q8BlockMethod)
# At-load methods quantize the tied head like any other layer (a role override may change it).
for _name in ("int8", "int8_reference", "int8_bf16act", "w8a8", "w8a8_reference", "q8_0"):
    register_tied_head(_name, lambda n=_name: method_for_role(n, "lm_head"))
register_tied_head("gguf", lambda: "gguf")  # the embedding's own Q4/Q8 blocks (gguf_int4_weights)
register_tied_head("gptq", lambda: "q8_0" if block_kernels_here() else None)
