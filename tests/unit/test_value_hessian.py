"""The attention-mixed inputs behind v_proj's Hessian, checked against transformers' own attention:
the probabilities equal its eager attention weights, and a value-weight perturbation dW changes the
attention output (o_proj's input) by exactly dW z for every head and query."""

from __future__ import annotations

from typing import Any

import torch

from serve.quantize.value_hessian import ValueHessian, attention_probs


def _tiny() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def _capture(model: Any, ids: torch.Tensor) -> dict[str, Any]:
    """The attention's input (after input_layernorm), RoPE tables, weights and o_proj's input."""
    seen: dict[str, Any] = {}
    attn = model.model.layers[0].self_attn
    h1 = attn.register_forward_pre_hook(lambda _m, a, kw: seen.update(x=kw.get("hidden_states", a[0] if a else None),
                                                                       rope=kw["position_embeddings"]),
                                        with_kwargs=True)
    h2 = attn.o_proj.register_forward_pre_hook(lambda _m, a: seen.update(o_in=a[0]))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    h1.remove()
    h2.remove()
    seen["weights"] = out.attentions[0]
    return seen


def test_probabilities_equal_transformers_attention_weights() -> None:
    model = _tiny()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    seen = _capture(model, ids)
    with torch.no_grad():
        probs = attention_probs(model.model.layers[0].self_attn, seen["x"], seen["rope"])
    torch.testing.assert_close(probs, seen["weights"], rtol=1e-5, atol=1e-6)


def test_value_perturbation_moves_the_output_by_dw_times_mixed_input() -> None:
    model = _tiny()
    attn = model.model.layers[0].self_attn
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    before = _capture(model, ids)
    dw = torch.randn_like(attn.v_proj.weight) * 0.1
    with torch.no_grad():
        attn.v_proj.weight += dw
    after = _capture(model, ids)
    with torch.no_grad():
        attn.v_proj.weight -= dw
        probs = attention_probs(attn, before["x"], before["rope"])  # [B, heads, L, L]
        z = probs @ before["x"][:, None]  # [B, heads, L, H]
    per_kv = dw.view(2, 8, 32)  # [kv heads, head_dim, H]
    expected = torch.einsum("bhlk,hdk->blhd", z, per_kv.repeat_interleave(2, dim=0)).reshape(2, 12, 32)
    torch.testing.assert_close(after["o_in"] - before["o_in"], expected, rtol=1e-4, atol=1e-5)
    acc = ValueHessian(attn, {"position_embeddings": before["rope"]})
    acc.add(before["x"])
    zz = z.reshape(-1, 32).double()
    torch.testing.assert_close(acc.h, 2 * zz.T @ zz / zz.shape[0], rtol=1e-5, atol=1e-6)
