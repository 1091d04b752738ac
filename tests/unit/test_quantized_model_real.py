"""The bundled SmolLM2-135M, quantized to a 4-bit GPTQ-format checkpoint (RTN: no calibration pass, so
it fits in CI), served by the native engine through the int4 kernel: it must still answer sensibly,
and agree with the dequantizing reference path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from sluice_kernels import cpu as cpu_kernels

from tests.unit.model_fixtures import gguf_path, quantized_kernel_layers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rtn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    from serve.quantize.checkpoint import CheckpointMeta, write_checkpoint_from
    from serve.quantize.gptq import GPTQOptions
    from serve.quantize.grid import QuantSpec
    from serve.quantize.sequential import quantize_decoder

    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32).eval()
    spec = QuantSpec(4, 128, sym=False)
    with torch.no_grad():
        q = quantize_decoder(model, None, spec, "rtn", GPTQOptions(), lambda _i, _s: None)
    out = tmp_path_factory.mktemp("smollm2-rtn-int4")
    config = model.config.to_dict()
    write_checkpoint_from(model.state_dict(), config, out, q, CheckpointMeta(spec, "rtn", False, 0.01))
    return out


def _greedy(lm, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    for _ in range(steps):
        out.append(int(lm.logits(out)[-1].argmax()))
    return out[len(ids):]


def test_int4_checkpoint_answers_sensibly(rtn_checkpoint: Path) -> None:
    from benchmarks.quality_models import NativeLM
    from serve.models.loader import load_tokenizer

    tok = load_tokenizer(gguf_path())
    lm = NativeLM(str(rtn_checkpoint), dtype="bfloat16", max_len=512)
    # qkv, o, gate_up, down per layer; plus the tied head as Q8_0 blocks where the AVX2 kernels run
    head = lm.model.tied_head is not None
    assert head == (cpu_kernels.unavailable_reason() is None)
    assert quantized_kernel_layers(lm.model) == 30 * 4 + head
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    text = tok.decode(_greedy(lm, ids, 12))
    assert "Paris" in text, text


def test_int4_kernel_agrees_with_dequant_reference(rtn_checkpoint: Path, cpu_int4_kernel: str) -> None:
    from benchmarks.quality_models import NativeLM

    ids = list(range(100, 164))
    fast = NativeLM(str(rtn_checkpoint), dtype="float32", max_len=256).logits(ids)
    ref = NativeLM(str(rtn_checkpoint), dtype="float32", quant="gptq_reference", max_len=256).logits(ids)
    agree = float((fast.argmax(-1) == ref.argmax(-1)).float().mean())
    if cpu_int4_kernel == "torch-int4":  # float activations: float rounding only
        assert float((fast - ref).abs().max()) < 1e-2 * float(ref.abs().max())
        assert agree > 0.95
    else:  # int8 activations per 32-block, as llama.cpp computes
        assert float((fast - ref).norm() / ref.norm()) < 0.03
        assert agree > 0.9
