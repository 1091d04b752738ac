"""Read a Llama-architecture GGUF file: metadata -> ModelArchConfig, tensors -> HF-named float32 weights.

llama.cpp's converter permutes the rows of Q and K projections so that rotary pairs are adjacent
(GPT-J "interleaved" layout: dims (2i, 2i+1) rotate together). Our model and transformers use the
"rotate_half" layout (dims (i, i + head_dim/2) rotate together), so Q/K rows are un-permuted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from serve.models.config import ModelArchConfig, RopeScaling
from serve.models.gguf_format import GGUFContainer, GGUFFormatError

# GGUF tensor name -> HF name. `{i}` is the layer index.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight", "rope_freqs.weight": "rope_freqs",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


class GGUFError(ValueError):
    """The GGUF file is unreadable or describes something the native engine cannot run."""


def hf_name(gguf_name: str) -> str | None:
    """Map a GGUF tensor name to its HF name; None for tensors we do not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation. w: [n_head * head_dim, in] -> same shape."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFModelFile:
    """A Llama-architecture GGUF file: its config, chat template and HF-layout weights."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.container = GGUFContainer(self.path)
        except (GGUFFormatError, OSError) as e:
            raise GGUFError(f"cannot read GGUF file {self.path}: {e}") from e
        self.metadata = self.container.metadata

    def value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.value("general.architecture", ""))

    def arch_config(self) -> ModelArchConfig:
        arch = self.architecture
        if arch != "llama":
            raise GGUFError(f"{self.path.name}: architecture {arch!r} is not supported by the native engine "
                            "(supported: llama)")

        def req(key: str) -> Any:
            v = self.value(f"{arch}.{key}")
            if v is None:
                raise GGUFError(f"{self.path.name}: GGUF metadata lacks {arch}.{key}")
            return v

        heads, hidden = int(req("attention.head_count")), int(req("embedding_length"))
        names = set(self.container.tensors)
        vocab = self.value(f"{arch}.vocab_size") or len(self.value("tokenizer.ggml.tokens", []))
        eos = [self.value("tokenizer.ggml.eos_token_id"), self.value("tokenizer.ggml.eot_token_id")]
        return ModelArchConfig(
            architecture="llama", vocab_size=int(vocab), hidden_size=hidden,
            intermediate_size=int(req("feed_forward_length")), num_layers=int(req("block_count")),
            num_heads=heads, num_kv_heads=int(self.value(f"{arch}.attention.head_count_kv", heads)),
            head_dim=int(self.value(f"{arch}.attention.key_length", hidden // heads)),
            rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
            rope_theta=float(self.value(f"{arch}.rope.freq_base", 10000.0)),
            max_position_embeddings=int(req("context_length")),
            tie_word_embeddings="output.weight" not in names,
            bos_token_id=self.value("tokenizer.ggml.bos_token_id"),
            eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
            rope_scaling=self._rope_scaling(arch),
        )

    def _rope_scaling(self, arch: str) -> RopeScaling:
        kind = self.value(f"{arch}.rope.scaling.type")
        if kind in (None, "none"):
            return RopeScaling()
        if kind != "linear":
            raise GGUFError(f"{self.path.name}: rope scaling {kind!r} is not supported")
        return RopeScaling(kind="linear", factor=float(self.value(f"{arch}.rope.scaling.factor", 1.0)))

    def chat_template(self) -> str | None:
        return self.value("tokenizer.chat_template")

    def tensors(self, cfg: ModelArchConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, float32 tensor in HF layout) for every tensor the model uses, one at a time."""
        for gguf_name in self.container.tensors:
            name = hf_name(gguf_name)
            if name is None:
                continue
            try:
                w = torch.from_numpy(self.container.dequantize(gguf_name))
            except GGUFFormatError as e:
                raise GGUFError(str(e)) from e
            if name.endswith("q_proj.weight"):
                w = unpermute_rows(w, cfg.num_heads)
            elif name.endswith("k_proj.weight"):
                w = unpermute_rows(w, cfg.num_kv_heads)
            yield name, w
