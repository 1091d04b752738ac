"""`sluice models convert`: the HF directory it writes loads in transformers (offline) and in our own
loader, and both give what the GGUF gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serve.cli import main as sluice
from tests.unit.model_fixtures import MODEL, gguf_path, hf_model


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf_path()  # skip when the model is not pulled
    out = tmp_path_factory.mktemp("convert") / "smollm2-hf"
    assert sluice(["models", "convert", MODEL, str(out)]) == 0
    return out


@pytest.mark.slow
def test_writes_a_complete_hf_directory(converted: Path) -> None:
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (converted / name).is_file(), name
    cfg = json.loads((converted / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"]) == (30, 3, True)
    assert not list(converted.parent.glob("*.partial"))
    assert sluice(["models", "convert", MODEL, str(converted)]) == 1  # refuses to overwrite


@pytest.mark.slow
def test_transformers_loads_it_offline_and_decodes_like_the_gguf(converted: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(converted), local_files_only=True)
    assert tok.chat_template and "im_start" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(converted), local_files_only=True, dtype=torch.float32)
    ids = torch.tensor([tok(tok.apply_chat_template([{"role": "user", "content": "Name three colors."}],
                                                    tokenize=False, add_generation_prompt=True)).input_ids])
    with torch.inference_mode():
        ours = model.generate(ids, max_new_tokens=12, do_sample=False)
        ref = hf_model().generate(ids, max_new_tokens=12, do_sample=False)
    assert ours.tolist() == ref.tolist()


@pytest.mark.slow
def test_native_loader_reads_the_directory_like_the_gguf(converted: Path) -> None:
    from serve.models.loader import load_model, load_model_config, load_tokenizer

    assert load_model_config(converted) == load_model_config(gguf_path())
    assert load_tokenizer(converted).chat_template == load_tokenizer(gguf_path()).chat_template
    a, b = load_model(converted, dtype="float32"), load_model(gguf_path(), dtype="float32", quant="none")
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(ta, tb), na


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf at all")
    assert sluice(["models", "convert", str(bogus), str(tmp_path / "out")]) == 1
    assert "not a GGUF file" in capsys.readouterr().err
    assert sluice(["models", "convert", str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 1
