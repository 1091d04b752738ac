"""GGUF Q4_0 / Q4_1 blocks into the int4 kernel: block decoding == the gguf package's dequantizer,
and the bundled model through quant="gguf" == the same GGUF dequantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import quants
from gguf.constants import GGMLQuantizationType

from serve.layers.quant.gguf import Q4_0, Q4_1, decode_q4_blocks
from serve.layers.quant.int4_cpu import int4_matmul, pack_int4_affine
from tests.unit.model_fixtures import gguf_path


def _random_blocks(ggml_type: int, rows: int, blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    header = 4 if ggml_type == Q4_1 else 2
    out = rng.integers(0, 256, size=(rows, blocks, header + 16), dtype=np.uint8)
    halves = (rng.standard_normal((rows, blocks, header // 2)) * 0.05).astype(np.float16)
    out[:, :, :header] = halves.view(np.uint8).reshape(rows, blocks, header)
    return out.reshape(rows, -1)


@pytest.mark.parametrize("ggml_type,qtype", [(Q4_0, GGMLQuantizationType.Q4_0), (Q4_1, GGMLQuantizationType.Q4_1)])
def test_block_decoding_matches_gguf_package(ggml_type: int, qtype: GGMLQuantizationType) -> None:
    raw = _random_blocks(ggml_type, rows=32, blocks=4, seed=ggml_type)
    s = decode_q4_blocks(raw, ggml_type)
    rep = lambda t: t.repeat_interleave(32, dim=1)  # noqa: E731
    w = (s.codes.float() - 8) * rep(s.scales) + rep(s.offsets)
    torch.testing.assert_close(w, torch.from_numpy(quants.dequantize(raw, qtype)), rtol=1e-6, atol=1e-6)
    x = torch.randn(3, 128)
    y = int4_matmul(x, pack_int4_affine(s.codes, s.scales.T, s.offsets.T, 32, torch.float32))
    torch.testing.assert_close(y, x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bundled_gguf_int4_matches_dequantized() -> None:
    from benchmarks.quality_models import NativeLM

    path = gguf_path()
    ids = list(range(200, 264))
    fast = NativeLM(path, dtype="float32", quant="gguf", max_len=256)
    assert sum(hasattr(m, "int4") for m in fast.model.modules()) == 30 * 4
    ref = NativeLM(path, dtype="float32", quant="none", max_len=256)
    a, b = fast.logits(ids), ref.logits(ids)
    assert float((a - b).abs().max()) < 1e-3 * float(b.abs().max())
    assert torch.equal(a.argmax(-1), b.argmax(-1))
