"""Llama for packed batches: GQA, RoPE, RMSNorm, SwiGLU, optional tied embeddings.

Tokens of many sequences arrive flat ([T]); which tokens belong together, where their K/V goes and
what they attend to is in the ForwardContext, read only by the attention backend. Linear layers get
their storage and matmul from a quant method; attention from an AttentionBackend. This file imports
neither a kernel nor a quantization scheme.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from serve.attention.base import AttentionBackend
from serve.layers.activation import silu_and_mul
from serve.layers.linear import Linear
from serve.layers.norm import RMSNorm
from serve.layers.quant.base import get_quant_method, method_for_role, tied_head_method
from serve.layers.rotary import RotaryEmbedding, apply_rotary_
from serve.models.config import ModelArchConfig
from serve.worker.forward_context import ForwardContext


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelArchConfig, backend: AttentionBackend, quant: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, [cfg.q_size, cfg.kv_size, cfg.kv_size], get_quant_method(quant), dtype)
        self.o_proj = Linear(cfg.q_size, [cfg.hidden_size], get_quant_method(quant), dtype)
        self.backend = backend
        self.scale = cfg.head_dim ** -0.5
        self.k_cache = torch.empty(0)  # bound by `LlamaForCausalLM.bind_kv_cache`
        self.v_cache = torch.empty(0)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """x: [T, H] -> [T, H]."""
        t = x.shape[0]
        qk, v = self.qkv_proj(x).split([(self.n_heads + self.n_kv) * self.head_dim, self.n_kv * self.head_dim],
                                       dim=-1)
        # Q and K heads sit side by side in the fused projection: rotate them in one call, in place.
        q, k = apply_rotary_(qk.view(t, self.n_heads + self.n_kv, self.head_dim), cos, sin).split(
            [self.n_heads, self.n_kv], dim=1)
        o = self.backend.forward(q, k, v.view(t, self.n_kv, self.head_dim), self.k_cache, self.v_cache,
                                 ctx.attn_metadata, self.scale)
        return self.o_proj(o.reshape(t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelArchConfig, quant: str, dtype: torch.dtype) -> None:
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, [inter, inter], get_quant_method(quant), dtype)
        self.down_proj = Linear(inter, [cfg.hidden_size], get_quant_method(method_for_role(quant, "down_proj")),
                                dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, backend: AttentionBackend, quant: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = LlamaAttention(cfg, backend, quant, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = LlamaMLP(cfg, quant, dtype)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block. Returns (this block's MLP output, residual stream before it); the caller's
        next norm adds them, so each residual add happens once, fused with a norm."""
        x, residual = self.input_layernorm(h, residual)
        x = self.self_attn(x, cos, sin, ctx)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# HF weight name suffix -> (module path inside a layer, shard index)
_LAYER_WEIGHTS = {
    "self_attn.q_proj.weight": ("self_attn.qkv_proj", 0), "self_attn.k_proj.weight": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj.weight": ("self_attn.qkv_proj", 2), "self_attn.o_proj.weight": ("self_attn.o_proj", 0),
    "mlp.gate_proj.weight": ("mlp.gate_up_proj", 0), "mlp.up_proj.weight": ("mlp.gate_up_proj", 1),
    "mlp.down_proj.weight": ("mlp.down_proj", 0),
    "input_layernorm.weight": ("input_layernorm", -1), "post_attention_layernorm.weight": ("post_attention_layernorm", -1),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchConfig, backend: AttentionBackend, dtype: torch.dtype,
                 quant: str = "none", max_positions: int | None = None) -> None:
        super().__init__()
        self.cfg, self.dtype, self.backend = cfg, dtype, backend
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype),
                                         requires_grad=False)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, backend, quant, dtype) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(
            cfg.hidden_size, [cfg.vocab_size], get_quant_method(quant), dtype)
        # Tied embeddings under a quantized method: the vocab projection (the largest matmul of a
        # decode step for small models) may get a quantized copy (at-load methods quantize the
        # embedding's rows, gguf reads its blocks); the lookup table stays float.
        head_method = tied_head_method(quant) if cfg.tie_word_embeddings else None
        self.tied_head = None if head_method is None else Linear(cfg.hidden_size, [cfg.vocab_size],
                                                                 get_quant_method(head_method), dtype)
        self._max_positions = max_positions or cfg.max_position_embeddings
        self.rotary = RotaryEmbedding(cfg.head_dim, self._max_positions, cfg.rope_theta, cfg.rope_scaling)

    def bind_kv_cache(self, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """caches[i] = (k, v) of layer i, each [num_blocks, block_size, num_kv_heads, head_dim]."""
        if len(caches) != len(self.layers):
            raise ValueError(f"{len(caches)} KV cache pairs for {len(self.layers)} layers")
        for layer, (k, v) in zip(self.layers, caches, strict=True):
            layer.self_attn.k_cache, layer.self_attn.v_cache = k, v

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """input_ids, positions: [T] int64 -> final hidden states [T, H] in the model dtype."""
        if ctx.attn_metadata is None:
            ctx.attn_metadata = self.backend.prepare(ctx)
        cos, sin = self.rotary.lookup(positions, self.dtype)
        h = F.embedding(input_ids, self.embed_tokens)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            h, residual = layer(h, residual, cos, sin, ctx)
        return self.norm(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> logits [N, vocab] float32."""
        head = self.lm_head if self.lm_head is not None else self.tied_head
        logits = F.linear(hidden, self.embed_tokens) if head is None else head(hidden)
        return logits.float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Consume (HF name, tensor) pairs; raises ValueError naming what is missing or unexpected."""
        expected = self._expected_names()
        seen: set[str] = set()
        head_loaded = False
        for name, tensor in weights:
            if name == "rope_freqs":
                self.rotary = RotaryEmbedding(self.cfg.head_dim, self._max_positions, self.cfg.rope_theta,
                                              self.cfg.rope_scaling, freq_factors=tensor)
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                if self.tied_head is not None and not isinstance(tensor, torch.Tensor):
                    self.tied_head.load_shard(0, tensor)  # the embedding's quantized blocks
                    head_loaded = True
                continue  # some tied checkpoints store a copy of the embedding
            if name not in expected:
                continue  # rotary inv_freq buffers and the like
            self._load_one(name, tensor)
            seen.add(name)
        missing = expected - seen
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
        if self.tied_head is not None and not head_loaded:
            self.tied_head.load_shard(0, self.embed_tokens.data)
        for m in self.modules():
            if isinstance(m, Linear):
                m.finalize()

    def _expected_names(self) -> set[str]:
        names = {"model.embed_tokens.weight", "model.norm.weight"}
        if self.lm_head is not None:
            names.add("lm_head.weight")
        for i in range(len(self.layers)):
            names.update(f"model.layers.{i}.{suffix}" for suffix in _LAYER_WEIGHTS)
        return names

    def _load_one(self, name: str, tensor: torch.Tensor) -> None:
        if name == "model.embed_tokens.weight":
            _copy_checked(self.embed_tokens, tensor, name)
        elif name == "model.norm.weight":
            _copy_checked(self.norm.weight, tensor, name)
        elif name == "lm_head.weight":
            self.lm_head.load_shard(0, tensor)
        else:
            idx, suffix = name.removeprefix("model.layers.").split(".", 1)
            path, shard = _LAYER_WEIGHTS[suffix]
            module = self.layers[int(idx)].get_submodule(path)
            if shard < 0:
                _copy_checked(module.weight, tensor, name)
            else:
                module.load_shard(shard, tensor)


def _copy_checked(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if param.shape != tensor.shape:
        raise ValueError(f"weight {name}: expected shape {tuple(param.shape)}, got {tuple(tensor.shape)}")
    param.data.copy_(tensor)
