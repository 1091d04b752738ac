"""Walk a Llama decoder layer by layer, quantizing each linear from the inputs it really sees.

The forward passes run on transformers' LlamaForCausalLM in float32 on CPU (only the calibration
forwards; the algorithm is ours). Inputs of layer i are the outputs of layer i-1 *after* its weights
were quantized, so later layers correct for the error of earlier ones. Inside a layer the linears are
visited in "true sequential" order: q/k/v (one shared input), then o_proj, then gate/up, then
down_proj; each group's Hessian is collected after the groups before it were quantized. q/k share the
plain input Hessian; v_proj gets the attention-mixed one of serve/quantize/value_hessian.py (in the
same column order, so act-order's g_idx stays shared by the fused QKV layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from serve.quantize.gptq import GPTQOptions, HessianAccumulator, column_order, gptq_quantize
from serve.quantize.grid import QuantizedWeight, QuantSpec, rtn_quantize
from serve.quantize.threads import single_thread
from serve.quantize.value_hessian import ValueHessian

# Linears sharing one input are quantized from one Hessian (and so share act-order's g_idx).
SEQUENTIAL_GROUPS: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)

Progress = Callable[[int, str], None]  # (layer index, stage description)


def quantized_in_features(model: nn.Module) -> dict[str, int]:
    """{HF module name: in_features} of every linear `quantize_decoder` will quantize, in model order."""
    return {f"model.layers.{i}.{name}": layer.get_submodule(name).in_features
            for i, layer in enumerate(model.model.layers) for group in SEQUENTIAL_GROUPS for name in group}


class _StopForward(Exception):
    pass


def _layer_inputs(model: nn.Module, windows: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Run the embedding stage only; returns layer-0 inputs per batch and the shared layer kwargs."""
    captured: list[torch.Tensor] = []
    kwargs_seen: dict[str, Any] = {}

    def hook(_mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        kwargs_seen.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in windows.split(batch):
            with contextlib.suppress(_StopForward):
                model(input_ids=b, use_cache=False)
    finally:
        handle.remove()
    return captured, kwargs_seen


def _run_layer(layer: nn.Module, inputs: list[torch.Tensor], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    outs = []
    for x in inputs:
        y = layer(x, **kwargs)
        outs.append(y[0] if isinstance(y, tuple) else y)
    return outs


def _collect_hessians(layer: nn.Module, firsts: list[nn.Linear], inputs: list[torch.Tensor],
                      kwargs: dict[str, Any]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One pass over the calibration inputs: a Hessian for the input of each module in `firsts`, and
    {"self_attn.v_proj": attention-mixed Hessian} when q_proj is among them."""
    accs: list[HessianAccumulator | ValueHessian] = [HessianAccumulator(m.in_features) for m in firsts]
    mods = list(firsts)
    extra: dict[str, ValueHessian] = {}
    if layer.self_attn.q_proj in firsts:
        extra["self_attn.v_proj"] = ValueHessian(layer.self_attn, kwargs)
        mods.append(layer.self_attn.q_proj)
        accs.append(extra["self_attn.v_proj"])
    handles = [m.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add(args[0]))
               for m, acc in zip(mods, accs, strict=True)]
    try:
        _run_layer(layer, inputs, kwargs)
    finally:
        for h in handles:
            h.remove()
    return [a.h for a in accs[:len(firsts)]], {k: v.h for k, v in extra.items()}


def _quantize_group(layer: nn.Module, prefix: str, group: tuple[str, ...], h: torch.Tensor | None, spec: QuantSpec,
                    opts: GPTQOptions, out: dict[str, QuantizedWeight],
                    own: dict[str, torch.Tensor] | None = None) -> None:
    """own: per-module Hessians replacing the group's `h` (columns still ordered by `h`)."""
    order = column_order(h, opts.act_order) if h is not None else None
    for name in group:
        mod = layer.get_submodule(name)
        w = mod.weight.data
        with single_thread():
            hh = (own or {}).get(name, h)
            qw = gptq_quantize(w, hh, spec, opts, order) if hh is not None else rtn_quantize(w, spec)
            mod.weight.data.copy_(qw.dequantize().to(w.dtype))
        out[f"{prefix}.{name}"] = qw


def quantize_decoder(model: nn.Module, windows: torch.Tensor | None, spec: QuantSpec, method: str,
                     opts: GPTQOptions, progress: Progress, batch: int = 8,
                     true_sequential: bool = True) -> dict[str, QuantizedWeight]:
    """Quantize every decoder linear of an HF Llama model in place (weights become their dequantized
    values) and return the integer form by HF module name ("model.layers.3.mlp.up_proj").

    windows: [nsamples, seqlen] token ids (GPTQ only; RTN needs no calibration data).
    true_sequential=False collects all four Hessians of a layer in one pass (2 forwards per layer
    instead of 5); inputs of o_proj / down_proj then come from the unquantized layer.
    """
    if method not in ("gptq", "rtn"):
        raise ValueError(f"unknown method {method!r}; choose gptq or rtn")
    out: dict[str, QuantizedWeight] = {}
    inputs, kwargs = _layer_inputs(model, windows, batch) if method == "gptq" else ([], {})
    for i, layer in enumerate(model.model.layers):
        passes = [SEQUENTIAL_GROUPS] if not true_sequential else [(g,) for g in SEQUENTIAL_GROUPS]
        for groups in passes:
            progress(i, ", ".join("+".join(n.split(".")[-1] for n in g) for g in groups))
            firsts = [layer.get_submodule(g[0]) for g in groups]
            hs, own = _collect_hessians(layer, firsts, inputs, kwargs) if method == "gptq" else ([None] * len(groups), {})
            for g, h in zip(groups, hs, strict=True):
                _quantize_group(layer, f"model.layers.{i}", g, h, spec, opts, out, own)
        if method == "gptq":
            progress(i, "forward")
            inputs = _run_layer(layer, inputs, kwargs)
    return out
