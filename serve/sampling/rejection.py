"""Rejection sampling of draft tokens: the output follows the target distribution exactly.

For draft tokens d_0..d_{k-1} drawn from q_0..q_{k-1} and the target's processed distributions
p_0..p_k (p_j predicts the token after d_{j-1}, with every sampling transform applied for that
position's own output prefix): accept d_j with probability min(1, p_j(d_j) / q_j(d_j)); at the first
rejection draw the replacement from normalise(max(p_j - q_j, 0)) and stop; when all k are accepted
draw a bonus token from p_k. Each emitted token is then distributed exactly as p (Leviathan et al.,
2023; Chen et al., 2023). Deterministic drafts (n-gram or prompt lookup, a greedy draft) are a point
mass q: accept with probability p_j(d_j), else draw from p_j with d_j's mass removed, so
P(d) = p(d) and P(t != d) = (1 - p(d)) * p(t) / (1 - p(d)) = p(t).
"""

from __future__ import annotations

import torch

from serve.sampling.transforms import draw


def rejection_sample(target_probs: torch.Tensor, draft_ids: torch.Tensor, draft_probs: torch.Tensor | None,
                     uniforms: torch.Tensor) -> list[int]:
    """Verify k drafts of one request; returns the accepted drafts plus one corrected/bonus token.

    target_probs: [k + 1, V] float32, rows summing to 1; draft_ids: [k] int64;
    draft_probs: [k, V] float32 (None: point mass on each draft); uniforms: [k + 1] in [0, 1)
    (k for the accept tests, the last one for the replacement draw).
    """
    k = draft_ids.shape[0]
    pos = torch.arange(k, device=target_probs.device)
    p_d = target_probs[pos, draft_ids]
    q_d = draft_probs[pos, draft_ids] if draft_probs is not None else torch.ones_like(p_d)
    # u < p / q without a division (q_d == 0 cannot be drawn; it then accepts whenever p_d > 0).
    rejected = torch.nonzero(uniforms[:k] * q_d >= p_d)
    n = int(rejected[0, 0]) if rejected.numel() else k
    if n == k:
        dist = target_probs[k]
    elif draft_probs is None:
        dist = target_probs[n].clone()
        dist[draft_ids[n]] = 0.0
    else:
        dist = (target_probs[n] - draft_probs[n]).clamp_(min=0.0)
    if float(dist.sum()) <= 0.0:  # only by rounding (p == q): then rejection had probability 0
        dist = target_probs[n]
    token = int(draw(dist.unsqueeze(0), uniforms[k:k + 1])[0])
    return draft_ids[:n].tolist() + [token]
