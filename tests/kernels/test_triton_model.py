"""A real (tiny, random) Llama through the loader: attention_backend="triton" == "torch_sdpa", step by step.

The model is selected by name through `load_model`, exactly as the runner does, so this also checks
that the backend registry reaches the kernel. Two steps share the paged caches: prefills, then a
decode, a prefill chunk over a cached prefix and a fresh prefill packed together.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from serve.models.loader import load_model
from serve.worker.forward_context import build_context

BS, NUM_BLOCKS = 4, 24


def _tiny_llama(path: Path) -> None:
    """A random Llama checkpoint (HF names and config keys), written without importing transformers."""
    from safetensors.torch import save_file

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 48,
           "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
           "head_dim": 8, "max_position_embeddings": 128, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "hidden_act": "silu", "torch_dtype": "float32"}
    gen = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (64, 48), "model.norm.weight": (48,)}
    for i in range(2):
        pre = f"model.layers.{i}."
        shapes.update({pre + "self_attn.q_proj.weight": (48, 48), pre + "self_attn.k_proj.weight": (16, 48),
                       pre + "self_attn.v_proj.weight": (16, 48), pre + "self_attn.o_proj.weight": (48, 48),
                       pre + "mlp.gate_proj.weight": (96, 48), pre + "mlp.up_proj.weight": (96, 48),
                       pre + "mlp.down_proj.weight": (48, 96), pre + "input_layernorm.weight": (48,),
                       pre + "post_attention_layernorm.weight": (48,)})
    weights = {k: (1 + 0.1 * torch.randn(s, generator=gen)) if len(s) == 1 else 0.2 * torch.randn(s, generator=gen)
               for k, s in shapes.items()}
    save_file(weights, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))


def _run(path: Path, backend: str, steps: list) -> list[torch.Tensor]:
    model = load_model(path, dtype="float32", attention_backend=backend, quant="none", block_size=BS)
    assert model.backend.name == backend
    model.bind_kv_cache([(torch.zeros(NUM_BLOCKS, BS, 2, 8), torch.zeros(NUM_BLOCKS, BS, 2, 8)) for _ in range(2)])
    outs = []
    with torch.inference_mode():
        for tokens, starts, tables in steps:
            ctx = build_context([len(t) for t in tokens], starts, tables, BS, torch.device("cpu"))
            ids = torch.tensor([t for seq in tokens for t in seq], dtype=torch.int64)
            outs.append(model.compute_logits(model(ids, ctx.positions, ctx)))
    return outs


def test_tiny_llama_logits_triton_equal_torch_sdpa(tmp_path: Path) -> None:
    _tiny_llama(tmp_path)
    gen = torch.Generator().manual_seed(1)
    a, b, c = (torch.randint(0, 64, (n,), generator=gen).tolist() for n in (10, 6, 5))
    ta, tb, tc = [7, 2, 19], [11, 3, 5], [0, 14]  # shuffled physical blocks
    steps = [
        ([a, b[:2]], [0, 0], [ta, tb]),  # two prefills (b's is a first chunk)
        ([[5], b[2:], c], [10, 2, 0], [ta, tb, tc]),  # decode, chunk over a cached prefix, fresh prefill
    ]
    got, want = _run(tmp_path, "triton", steps), _run(tmp_path, "torch_sdpa", steps)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert float((g - w).abs().max()) < 1e-4 * float(w.abs().max())
