"""`quantize_decoder` + `write_checkpoint` on a tiny random Llama, loaded back by the native engine.

The transformers model is quantized in place (its weights become the dequantized values), so it is
the reference for what the checkpoint must compute: the native engine's logits through the int4
kernel and through the dequantizing reference path must both match it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serve.quantize.checkpoint import CheckpointMeta, write_checkpoint
from serve.quantize.gptq import GPTQOptions
from serve.quantize.grid import QuantSpec
from serve.quantize.sequential import quantize_decoder
from tests.unit.model_fixtures import quantized_kernel_layers


def _tiny_llama(path: Path) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=True, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(path))
    return model


def _quantize(tmp_path: Path, method: str, act_order: bool, true_sequential: bool = True) -> tuple[torch.nn.Module, Path]:
    src, out = tmp_path / "hf", tmp_path / f"q-{method}"
    model = _tiny_llama(src)
    windows = torch.randint(0, 96, (6, 48), generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(4, 32, sym=False)
    stages: list[tuple[int, str]] = []
    with torch.no_grad():
        q = quantize_decoder(model, windows, spec, method, GPTQOptions(act_order=act_order),
                             lambda i, s: stages.append((i, s)), true_sequential=true_sequential)
    assert len(q) == 14 and stages[0][1].startswith("q_proj+k_proj+v_proj")
    write_checkpoint(src, out, q, CheckpointMeta(spec, method, act_order, 0.01, dtype="float32"))
    return model, out


@pytest.mark.parametrize("method,act_order,true_sequential", [("gptq", False, True), ("gptq", True, True),
                                                              ("gptq", False, False), ("rtn", False, True)])
def test_native_engine_runs_the_checkpoint(tmp_path: Path, method: str, act_order: bool, true_sequential: bool,
                                           cpu_int4_kernel: str) -> None:
    from benchmarks.quality_models import NativeLM

    hf_model, out = _quantize(tmp_path, method, act_order, true_sequential)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 32
    assert cfg["desc_act"] is act_order and cfg["checkpoint_format"] == "gptq"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as st:
        names = set(st.keys())
    assert "model.layers.0.self_attn.q_proj.qweight" in names and "model.layers.0.self_attn.q_proj.weight" not in names
    assert "model.embed_tokens.weight" in names and "model.layers.1.input_layernorm.weight" in names

    ids = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor([ids])).logits[0]
    fast = NativeLM(str(out), dtype="float32", max_len=256)
    ref = NativeLM(str(out), dtype="float32", quant="gptq_reference", max_len=256)
    # 4 fused linears per layer, plus the tied head (Q8_0 blocks) where the block kernels run
    assert quantized_kernel_layers(fast.model) == 2 * 4 + (cpu_int4_kernel == "avx2-blocks")
    scale = float(expected.abs().max())
    # fp16 scales in the checkpoint (the in-place model kept f32 ones) bound the gap
    assert float((ref.logits(ids) - expected).abs().max()) < 2e-2 * scale
    # torch's int4 kernel takes float activations: float rounding only. The AVX2 block kernel
    # quantizes activations to int8 per 32-block (as llama.cpp does): ~0.3% here, same argmax.
    gap = float((fast.logits(ids) - ref.logits(ids)).abs().max())
    if cpu_int4_kernel == "torch-int4":
        assert gap < 1e-3 * scale
    else:
        assert gap < 1e-2 * scale
        assert float((fast.logits(ids).argmax(-1) == ref.logits(ids).argmax(-1)).float().mean()) >= 0.95


def test_quantized_checkpoint_cannot_be_requantized_at_load(tmp_path: Path) -> None:
    from serve.layers.quant.checkpoint_loading import resolve_quant

    _, out = _quantize(tmp_path, "rtn", False)
    assert resolve_quant(out) == "gptq"
    with pytest.raises(ValueError, match="GPTQ checkpoint"):
        resolve_quant(out, "int8")
