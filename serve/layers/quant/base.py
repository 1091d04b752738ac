"""The quant-method protocol: how a linear layer stores its weight and multiplies by it.

A `Linear` owns no weight layout of its own; its `QuantMethod` creates the parameters, receives the
full-precision rows of each shard (fused QKV / gate-up layers have several), may repack them once
everything is loaded, and performs the matmul. New methods (int8, int4, GPTQ) register a name here and
the model code does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn


class QuantMethod(Protocol):
    name: str

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       params_dtype: torch.dtype) -> None:
        """Register the layer's parameters/buffers for a [out_features, in_features] weight."""
        ...

    def load_rows(self, layer: nn.Module, rows: torch.Tensor, row_offset: int) -> None:
        """Copy full-precision weight rows [n, in_features] into output rows [row_offset, row_offset + n)."""
        ...

    def finalize(self, layer: nn.Module) -> None:
        """Called once after every shard is loaded (repacking, scale computation)."""
        ...

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] in the activation dtype -> [..., out_features] in the same dtype."""
        ...


_REGISTRY: dict[str, Callable[[], QuantMethod]] = {}


def register_quant_method(name: str, factory: Callable[[], QuantMethod]) -> None:
    _REGISTRY[name] = factory


def _load_builtins() -> None:
    # Built-in methods register on import; import here so callers need not know module names.
    from serve.layers.quant import gguf, gptq, int8, q8_0, unquantized, w8a8  # noqa: F401


def get_quant_method(name: str) -> QuantMethod:
    if name not in _REGISTRY:
        _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantization method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


# Per-role overrides: a scheme may give some layer roles (e.g. "down_proj", "lm_head") another method.
_ROLE_OVERRIDES: dict[str, dict[str, str]] = {}


def register_role_overrides(name: str, overrides: dict[str, str]) -> None:
    _ROLE_OVERRIDES[name] = dict(overrides)


def method_for_role(quant: str, role: str) -> str:
    """The quant method a layer of `role` gets under the model-wide `quant` (usually `quant` itself)."""
    get_quant_method(quant)  # validates the name and loads the built-in methods (and their overrides)
    return _ROLE_OVERRIDES.get(quant, {}).get(role, quant)


# Tied vocab projections: a scheme may give the tied head its own quantized Linear (the embedding
# lookup stays float). The chooser runs while the model is built and returns a method or None.
_TIED_HEAD: dict[str, Callable[[], str | None]] = {}


def register_tied_head(name: str, choose: Callable[[], str | None]) -> None:
    _TIED_HEAD[name] = choose


def tied_head_method(quant: str) -> str | None:
    """The quant method of a separate tied vocab projection under `quant`, or None (use the float
    embedding matrix as the projection)."""
    _load_builtins()
    get_quant_method(quant)
    choose = _TIED_HEAD.get(quant)
    return choose() if choose is not None else None
