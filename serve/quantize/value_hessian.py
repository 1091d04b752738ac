"""The Hessian v_proj really needs: its inputs mixed by the attention that reads the values.

A value error reaches the layer only through attention: head h's output at query i is
sum_j P_h[i, j] W_v x_j = W_v z_{h,i} with z_{h,i} = sum_j P_h[i, j] x_j. So the output error of a
perturbed W_v is dW_v z, and GPTQ's objective for v_proj is over the mixed inputs z, not over x.
The two differ most at attention sinks: the first token of a window is 1 / seqlen of the rows of
X X^T, yet many heads put most of their attention on it, so plain-input GPTQ pushes error into its
value, which every later token then reads (measured on SmolLM2-135M: with v_proj from the plain
Hessian GPTQ's perplexity was worse than round-to-nearest; see benchmarks/results/2026-11-22-quality-2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from serve.quantize.gptq import HessianAccumulator


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def attention_probs(attn: nn.Module, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
                    ) -> torch.Tensor:
    """x: [B, L, H] the attention's (normed) input -> causal softmax probabilities [B, heads, L, L], f32.

    Uses the HF Llama attention's current q/k weights and RoPE tables (cos, sin: [1 or B, L, head_dim])."""
    b, n, _ = x.shape
    d = attn.head_dim
    q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(b, n, -1, d).transpose(1, 2)
    k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(b, n, -1, d).transpose(1, 2)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query: one KV head per group
    scores = (q @ k.transpose(-1, -2)).float() * d ** -0.5
    future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


class ValueHessian:
    """Accumulates H = 2/n sum z z^T over every (head, query) row z of the attention-mixed inputs."""

    def __init__(self, attn: nn.Module, kwargs: dict[str, Any]) -> None:
        self.attn = attn
        self.rope = kwargs["position_embeddings"]
        self.acc = HessianAccumulator(attn.v_proj.in_features)

    def add(self, x: torch.Tensor) -> None:
        """x: [B, L, H] the input of q/k/v_proj."""
        probs = attention_probs(self.attn, x.float(), self.rope)  # [B, heads, L, L]
        self.acc.add(probs @ x.float()[:, None])  # [B, heads, L, H]

    @property
    def h(self) -> torch.Tensor:
        return self.acc.h
