"""GGUF reading: name mapping, llama.cpp's Q/K row permutation undone, config from metadata, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serve.models.gguf_reader import GGUFError, GGUFModelFile, hf_name, unpermute_rows
from tests.unit.model_fixtures import gguf_path


def llamacpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's converter does to HF Q/K rows (pairs each rotary half into adjacent dims)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head", [1, 3, 9])
def test_unpermute_inverts_llamacpp_permutation(n_head: int) -> None:
    w = torch.randn(n_head * 8, 5)
    assert torch.equal(unpermute_rows(llamacpp_permute(w, n_head), n_head), w)
    assert not torch.equal(llamacpp_permute(w, n_head), w)


def test_names_map_to_hf() -> None:
    assert hf_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert hf_name("blk.0.ffn_up.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.0.unknown.weight") is None


def test_config_from_bundled_metadata() -> None:
    cfg = GGUFModelFile(gguf_path()).arch_config()
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.eos_token_ids == (2,)
    assert cfg.max_position_embeddings == 8192 and cfg.head_dim == 64


def test_truncated_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(GGUFError, match="not a GGUF"):
        GGUFModelFile(bad)
    head = Path(gguf_path()).read_bytes()[:200_000]
    (tmp_path / "cut.gguf").write_bytes(head)
    with pytest.raises(GGUFError):
        GGUFModelFile(tmp_path / "cut.gguf")
