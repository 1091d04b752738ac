"""The `quantization` option: "auto" picks the checkpoint's own format, explicit methods are checked
against the checkpoint, and the choice flows from EngineConfig options through RunnerConfig to
`load_model` (tiny random Llama checkpoints; the bundled GGUF where pulled)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.engine.config import EngineConfig
from serve.layers.quant.checkpoint_loading import resolve_quant
from tests.unit.model_fixtures import quantized_kernel_layers
from tests.unit.test_quantize_checkpoint import _quantize


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(float HF dir, GPTQ dir made from it by RTN)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    _, gptq = _quantize(tmp, "rtn", act_order=False)
    return tmp / "hf", gptq


def test_auto_is_the_checkpoints_own_format(checkpoints: tuple[Path, Path]) -> None:
    hf, gptq = checkpoints
    assert resolve_quant(hf) == "none"
    assert resolve_quant(gptq, "auto") == "gptq"


def test_explicit_methods_must_fit_the_checkpoint(checkpoints: tuple[Path, Path]) -> None:
    hf, gptq = checkpoints
    assert resolve_quant(hf, "int8") == "int8" and resolve_quant(hf, "none") == "none"
    assert resolve_quant(gptq, "gptq_reference") == "gptq_reference"
    with pytest.raises(ValueError, match="GPTQ checkpoint; quantization='none'"):
        resolve_quant(gptq, "none")
    with pytest.raises(ValueError, match="needs a GPTQ checkpoint"):
        resolve_quant(hf, "gptq")
    with pytest.raises(ValueError, match="needs a .gguf checkpoint"):
        resolve_quant(hf, "gguf")


def test_unknown_method_lists_the_valid_ones(checkpoints: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match=r"unknown quantization method 'int3'.*gptq.*int8.*'auto'"):
        resolve_quant(checkpoints[0], "int3")


def test_other_quantized_hf_formats_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "awq"}}')
    with pytest.raises(ValueError, match="'awq' is not supported"):
        resolve_quant(tmp_path)


def test_engine_option_reaches_the_runner_config() -> None:
    from serve.worker.model_runner import RunnerConfig

    cfg = EngineConfig.from_options("m.gguf", {"quantization": "int8"})
    assert RunnerConfig(**cfg.runner_kwargs()).quantization == "int8"
    assert EngineConfig.from_options("m.gguf", {}).quantization == "auto"


def test_load_model_defaults_to_the_int4_kernel_on_a_gptq_dir(checkpoints: tuple[Path, Path]) -> None:
    from serve.models.loader import load_model

    hf, gptq = checkpoints
    model = load_model(gptq, dtype="float32", max_positions=64)
    assert model.quantization == "gptq" and quantized_kernel_layers(model) > 0
    ref = load_model(gptq, dtype="float32", quant="gptq_reference", max_positions=64)
    assert ref.quantization == "gptq_reference" and quantized_kernel_layers(ref) == 0
    assert load_model(hf, dtype="float32", max_positions=64).quantization == "none"


@pytest.mark.slow
def test_bundled_gguf_auto_is_gguf_int4() -> None:
    from tests.unit.model_fixtures import gguf_path

    path = gguf_path()
    assert resolve_quant(path) == "gguf"
    assert resolve_quant(path, "none") == "none" and resolve_quant(path, "int8") == "int8"
    with pytest.raises(ValueError, match="needs a GPTQ checkpoint"):
        resolve_quant(path, "gptq")


def test_auto_on_a_float32_cpu_picks_the_block_kernels_or_int8_with_bf16_activations(monkeypatch) -> None:
    import torch
    from sluice_kernels import cpu as cpu_kernels

    from serve.layers.quant.checkpoint_loading import auto_quant

    cpu = torch.device("cpu")
    monkeypatch.setattr(cpu_kernels, "available", lambda: True)
    assert auto_quant("gguf", cpu, torch.float32) == "gguf"  # AVX2 block kernels: GGUF blocks as they are
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert auto_quant("gguf", cpu, torch.float32) == "int8_bf16act"  # torch's int4 kernel is slow in f32
    assert auto_quant("gguf", cpu, torch.bfloat16) == "gguf"  # bf16: torch's int4 kernel is fast
    assert auto_quant("gptq", cpu, torch.float32) == "gptq"  # a GPTQ checkpoint keeps its own weights
    assert auto_quant(None, cpu, torch.float32) == "none"  # float checkpoints stay float unless asked
