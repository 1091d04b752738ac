"""Architecture name -> model class. The loader picks the class by the checkpoint's architecture."""

from __future__ import annotations

from torch import nn

from serve.models.llama import LlamaForCausalLM

MODELS: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
}


def model_class(architecture: str) -> type[nn.Module]:
    if architecture not in MODELS:
        raise ValueError(f"no native model for architecture {architecture!r}; available: {', '.join(MODELS)}")
    return MODELS[architecture]
