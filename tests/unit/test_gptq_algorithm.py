"""GPTQ against round-to-nearest on synthetic layers: the paper's central claim, and act-order's bookkeeping."""

from __future__ import annotations

import pytest
import torch

from serve.quantize.gptq import GPTQOptions, HessianAccumulator, gptq_quantize
from serve.quantize.grid import QuantSpec, grid_params, quantize_codes, rtn_quantize


def _correlated_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    """Activations with strongly correlated features and a few large-magnitude channels, like an LLM's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    x = torch.randn(n, k, generator=g) @ mix
    x[:, :4] *= 8.0
    return x


def _output_error(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float(((x @ (w - wq).T) ** 2).mean())


@pytest.mark.parametrize("spec", [QuantSpec(4, 64, sym=False), QuantSpec(4, 64, sym=True), QuantSpec(4, -1, sym=False),
                                  QuantSpec(8, 128, sym=True)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn(spec: QuantSpec, act_order: bool) -> None:
    torch.manual_seed(0)
    k, n = 256, 96
    w = torch.randn(n, k) * 0.05
    x = _correlated_inputs(2048, k, seed=1)
    acc = HessianAccumulator(k)
    for chunk in x.split(500):  # running average over uneven batches == one big batch
        acc.add(chunk)
    torch.testing.assert_close(acc.h, 2 * x.double().T @ x.double() / x.shape[0], rtol=1e-5, atol=1e-3)
    gptq = gptq_quantize(w, acc.h, spec, GPTQOptions(act_order=act_order, block_size=32))
    rtn = rtn_quantize(w, spec)
    e_gptq, e_rtn = _output_error(x, w, gptq.dequantize()), _output_error(x, w, rtn.dequantize())
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_codes_scales_zeros_are_in_range() -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    x = _correlated_inputs(512, 128, seed=2)
    acc = HessianAccumulator(128)
    acc.add(x)
    for sym in (False, True):
        q = gptq_quantize(w, acc.h, QuantSpec(4, 32, sym=sym))
        assert q.codes.min() >= 0 and q.codes.max() <= 15
        assert q.zeros.min() >= 1 and q.zeros.max() <= 15  # v1 format cannot store a zero point of 0
        assert q.scales.shape == (4, 32) and (q.scales > 0).all()
        if sym:
            assert (q.zeros == 8).all()


def test_act_order_groups_follow_hessian_diagonal() -> None:
    torch.manual_seed(0)
    k, g = 128, 32
    x = torch.randn(1024, k) * torch.linspace(0.1, 3.0, k)[torch.randperm(k)]
    acc = HessianAccumulator(k)
    acc.add(x)
    q = gptq_quantize(torch.randn(16, k), acc.h, QuantSpec(4, g), GPTQOptions(act_order=True))
    order = torch.argsort(torch.diag(acc.h), descending=True)
    # the g columns with the largest diag(H) form group 0, the next g group 1, ...
    assert torch.equal(q.g_idx[order].long(), torch.arange(k) // g)
    assert torch.equal(torch.bincount(q.g_idx.long()), torch.full((k // g,), g))
    # dequantize() must follow g_idx: rebuild column by column from the group parameters
    manual = torch.stack([q.scales[q.g_idx[c], :] * (q.codes[:, c] - q.zeros[q.g_idx[c], :]).float()
                          for c in range(k)], dim=1)
    torch.testing.assert_close(q.dequantize(), manual)


def test_dead_inputs_get_zero_weight() -> None:
    x = torch.randn(256, 64)
    x[:, 5] = 0.0
    acc = HessianAccumulator(64)
    acc.add(x)
    q = gptq_quantize(torch.randn(16, 64), acc.h, QuantSpec(4, 32))
    assert torch.all(q.dequantize()[:, 5].abs() <= q.scales[0] * 0.5 + 1e-6)


def test_rtn_is_round_to_nearest_of_each_group() -> None:
    torch.manual_seed(3)
    w = torch.randn(8, 64)
    q = rtn_quantize(w, QuantSpec(4, 32))
    s, z = grid_params(w[:, 32:], QuantSpec(4, 32))
    assert torch.equal(q.codes[:, 32:], quantize_codes(w[:, 32:], s, z, 15))
    err = (q.dequantize() - w).abs()
    assert torch.all(err <= q.scales[q.g_idx.long()].T * 0.5 + 1e-6)  # within half a step everywhere


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=3)
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(group_size=12)
    with pytest.raises(ValueError, match="Hessian shape"):
        gptq_quantize(torch.randn(4, 32), torch.eye(16), QuantSpec(4, 32))
