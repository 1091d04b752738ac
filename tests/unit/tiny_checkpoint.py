"""A tiny random Llama checkpoint a ModelRunner can load (config.json, safetensors, word-level tokenizer).

Weights are 0.2 * randn (norms near one), so logits spread wide enough that greedy decoding has no
near-ties: paths that differ by float rounding still pick the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96, "hidden_size": 48,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 8, "max_position_embeddings": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32"}


def write_tiny_checkpoint(folder: Path, seed: int = 0, **overrides: int) -> Path:
    """Write the checkpoint into `folder` (config fields overridable, e.g. head_dim=64) and return it."""
    from safetensors.torch import save_file

    from benchmarks.gpu.engine_bench import layer_shapes, word_level_tokenizer

    cfg = TINY | overrides
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"]),
              "model.norm.weight": (cfg["hidden_size"],)}
    for i in range(cfg["num_hidden_layers"]):
        shapes |= layer_shapes(cfg, i)
    gen = torch.Generator().manual_seed(seed)
    weights = {k: (1 + 0.1 * torch.randn(s, generator=gen)) if len(s) == 1 else 0.2 * torch.randn(s, generator=gen)
               for k, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    word_level_tokenizer(cfg["vocab_size"]).save(str(folder / "tokenizer.json"))
    return folder
