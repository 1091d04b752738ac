"""GGUF Q4_0 / Q4_1 / Q8_0 blocks in the native engine: block decoding == the gguf package's
dequantizer, torch's int4 kernel on the decoded blocks == the dense product, and the bundled model
through quant="gguf" (AVX2 block kernels, and torch's int4 kernel where those are off) == the same
GGUF dequantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import quants
from gguf.constants import GGMLQuantizationType

from serve.layers.quant import gguf as gguf_method
from serve.layers.quant.blocks import Q8Blocks, Q8x8, from_ggml
from serve.layers.quant.gguf import Q4_0, Q4_1, Q8_0, int4_affine
from serve.layers.quant.int4_cpu import int4_matmul, pack_int4_affine
from tests.requirements import kernels_missing, requires
from tests.unit.model_fixtures import gguf_path


def _random_blocks(ggml_type: int, rows: int, blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    header = 4 if ggml_type == Q4_1 else 2
    out = rng.integers(0, 256, size=(rows, blocks, header + (32 if ggml_type == Q8_0 else 16)), dtype=np.uint8)
    halves = (rng.standard_normal((rows, blocks, header // 2)) * 0.05).astype(np.float16)
    out[:, :, :header] = halves.view(np.uint8).reshape(rows, blocks, header)
    return out.reshape(rows, -1)


@pytest.mark.parametrize("ggml_type,qtype", [(Q4_0, GGMLQuantizationType.Q4_0), (Q4_1, GGMLQuantizationType.Q4_1)])
def test_block_decoding_matches_gguf_package(ggml_type: int, qtype: GGMLQuantizationType) -> None:
    raw = _random_blocks(ggml_type, rows=32, blocks=4, seed=ggml_type)
    blocks = from_ggml(raw, ggml_type)
    s = int4_affine(blocks)
    rep = lambda t: t.repeat_interleave(32, dim=1)  # noqa: E731
    w = (s.codes.float() - 8) * rep(s.scales) + rep(s.offsets)
    expected = torch.from_numpy(quants.dequantize(raw, qtype))
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(blocks.dequantize(), expected, rtol=1e-6, atol=1e-6)
    x = torch.randn(3, 128)
    y = int4_matmul(x, pack_int4_affine(s.codes, s.scales.T, s.offsets.T, 32, torch.float32))
    torch.testing.assert_close(y, x @ w.T, rtol=1e-4, atol=1e-4)


def test_q8_0_decoding_matches_gguf_package() -> None:
    raw = _random_blocks(Q8_0, rows=16, blocks=3, seed=8)
    blocks = from_ggml(raw, Q8_0)
    assert isinstance(blocks, Q8Blocks) and blocks.shape == (16, 96)
    expected = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q8_0))
    torch.testing.assert_close(blocks.dequantize(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_bundled_gguf_int4_matches_dequantized(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's int4 kernel path (the AVX2 block kernels switched off): exact weights, f32 products."""
    from benchmarks.quality_models import NativeLM

    monkeypatch.setattr(gguf_method, "_block_kernels", lambda: False)
    path = gguf_path()
    ids = list(range(200, 264))
    fast = NativeLM(path, dtype="float32", quant="gguf", max_len=256)
    assert sum(hasattr(m, "int4") for m in fast.model.modules()) == 30 * 4
    ref = NativeLM(path, dtype="float32", quant="none", max_len=256)
    a, b = fast.logits(ids), ref.logits(ids)
    assert float((a - b).abs().max()) < 1e-3 * float(b.abs().max())
    assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.slow
@requires("kernels", kernels_missing())
def test_bundled_gguf_block_kernels_match_dequantized() -> None:
    """AVX2 block kernels: every linear and the tied head (the Q8_0 embedding) read blocks; the only
    difference from the dequantized model is int8 activations, as in llama.cpp."""
    from benchmarks.quality_models import NativeLM

    path = gguf_path()
    ids = list(range(200, 328))
    fast = NativeLM(path, dtype="float32", quant="gguf", max_len=256)
    parts = [m.block_parts for m in fast.model.modules() if hasattr(m, "block_parts")]
    assert len(parts) == 30 * 4 + 1 and not any(hasattr(m, "weight") for m in fast.model.modules()
                                                 if hasattr(m, "block_parts"))
    assert isinstance(fast.model.tied_head.block_parts[0], Q8x8)
    ref = NativeLM(path, dtype="float32", quant="none", max_len=256)
    a, b = fast.logits(ids), ref.logits(ids)
    assert float((a - b).norm() / b.norm()) < 0.03
    assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) > 0.9
