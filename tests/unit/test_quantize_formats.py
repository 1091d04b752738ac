"""`sluice quantize --format`: the group size chosen or refused, the grid's default, the caveats logged
for vLLM, and what lands in quantize_config.json (pure functions, then the CLI on a tiny Llama)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from serve.quantize.checkpoint import CheckpointMeta, quantization_config
from serve.quantize.formats import choose_group_size, default_sym, fitting_sizes, vllm_caveats
from serve.quantize.grid import QuantSpec

# SmolLM2-135M's quantized linears, one layer's worth: hidden 576, intermediate 1536
SMOLLM2 = {"model.layers.0.self_attn.q_proj": 576, "model.layers.0.self_attn.o_proj": 576,
           "model.layers.0.mlp.up_proj": 576, "model.layers.0.mlp.down_proj": 1536}


def test_default_group_falls_back_to_the_largest_that_divides_every_layer() -> None:
    choice = choose_group_size(SMOLLM2, None)
    assert (choice.group_size, choice.requested) == (64, None)
    assert choice.note and "q_proj" in choice.note and "576" in choice.note and "64" in choice.note


def test_default_group_stays_128_without_a_note_when_it_divides() -> None:
    choice = choose_group_size({"a": 4096, "b": 11008}, None)  # Llama-2-7B's hidden and intermediate
    assert (choice.group_size, choice.requested, choice.note) == (128, None, None)


def test_default_group_is_per_row_when_no_vllm_size_divides() -> None:
    choice = choose_group_size({"a": 200, "b": 96}, None)  # gcd 8: none of 128, 64, 32
    assert choice.group_size == -1 and choice.note and "-1" in choice.note


def test_explicit_ragged_group_is_refused_naming_layer_and_sizes_that_fit() -> None:
    with pytest.raises(ValueError) as e:
        choose_group_size(SMOLLM2, 128)
    msg = str(e.value)
    assert "model.layers.0.self_attn.q_proj" in msg and "in_features 576" in msg and "2 more linears" in msg
    assert "64, 32 among those vLLM takes" in msg and "-1" in msg and "[192, 96, 64, 48, 32, 24, 16, 8]" in msg
    assert "--format sluice" in msg


@pytest.mark.parametrize("group", [64, 32, -1, 96])
def test_explicit_group_that_divides_is_kept(group: int) -> None:
    choice = choose_group_size(SMOLLM2, group)
    assert (choice.group_size, choice.requested, choice.note) == (group, group, None)


def test_sluice_format_keeps_ragged_groups_and_asymmetric_default() -> None:
    assert choose_group_size(SMOLLM2, None, "sluice").group_size == 128
    assert choose_group_size(SMOLLM2, 128, "sluice").group_size == 128
    assert default_sym("gptq") is True and default_sym("sluice") is False
    with pytest.raises(ValueError, match="unknown format 'awq'"):
        choose_group_size(SMOLLM2, None, "awq")


def test_fitting_sizes() -> None:
    assert fitting_sizes(SMOLLM2) == [192, 96, 64, 48, 32, 24, 16, 8]
    assert fitting_sizes({"a": 36}) == []


def test_vllm_caveats_name_each_setting_vllm_refuses() -> None:
    assert vllm_caveats(4, 64, True, False) == []
    assert vllm_caveats(4, -1, True, True) == []  # act-order without groups is a no-op vLLM accepts
    caveats = vllm_caveats(8, 96, False, True)
    assert len(caveats) == 4
    assert any("sym=False" in c for c in caveats) and any("desc_act" in c for c in caveats)
    assert any("group size 96" in c for c in caveats) and any("8 bits" in c for c in caveats)


def test_quantization_config_records_format_and_group_note() -> None:
    meta = CheckpointMeta(QuantSpec(4, 64, sym=True), "rtn", False, 0.01, fmt="gptq", group_note="why 64")
    cfg = quantization_config(meta)
    assert (cfg["group_size"], cfg["sym"], cfg["desc_act"], cfg["checkpoint_format"]) == (64, True, False, "gptq")
    assert cfg["sluice"] == {"format": "gptq", "group_size_note": "why 64"}
    plain = quantization_config(CheckpointMeta(QuantSpec(4, 128), "gptq", False, 0.01, fmt="sluice"))
    assert plain["sluice"] == {"format": "sluice"}


def _tiny_llama(path: Path, hidden: int = 96, intermediate: int = 192) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


def _quantize(argv: list[str]) -> int:
    from serve.quantize import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    a = parser.parse_args(["quantize", "--method", "rtn", "--threads", "1", *argv])
    return int(a.func(a))


def test_cli_defaults_write_a_vllm_shaped_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _tiny_llama(tmp_path / "hf")
    assert _quantize([str(src), str(tmp_path / "q")]) == 0
    out, err = capsys.readouterr()
    assert "note: group size 32 instead of the default 128" in err and "warning" not in err
    assert json.loads(out.strip().splitlines()[-1])["group_size"] == 32
    cfg = json.loads((tmp_path / "q" / "quantize_config.json").read_text())
    assert (cfg["group_size"], cfg["sym"], cfg["desc_act"]) == (32, True, False)
    assert "in_features 96" in cfg["sluice"]["group_size_note"]
    assert cfg == json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]


def test_cli_refuses_a_ragged_group_and_warns_on_asym(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _tiny_llama(tmp_path / "hf")
    assert _quantize(["--group-size", "64", str(src), str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "error: --group-size 64 does not divide" in err and "in_features 96" in err
    assert not (tmp_path / "q").exists()
    assert _quantize(["--asym", "--group-size", "32", str(src), str(tmp_path / "qa")]) == 0
    err = capsys.readouterr().err
    assert "warning: vLLM will not load this checkpoint: asymmetric" in err
    assert json.loads((tmp_path / "qa" / "quantize_config.json").read_text())["sym"] is False


def test_cli_sluice_format_reproduces_the_old_defaults(tmp_path: Path) -> None:
    src = _tiny_llama(tmp_path / "hf")
    assert _quantize(["--format", "sluice", "--group-size", "64", str(src), str(tmp_path / "q")]) == 0
    cfg = json.loads((tmp_path / "q" / "quantize_config.json").read_text())
    assert (cfg["group_size"], cfg["sym"], cfg["sluice"]) == (64, False, {"format": "sluice"})


def test_cli_sym_and_asym_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        _quantize(["--sym", "--asym", "a", "b"])
