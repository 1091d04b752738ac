"""Quantized checkpoints behind the real HTTP server (`--backend native`), driven with the openai client:
a GPTQ directory made by `sluice quantize` (RTN: no calibration pass, fits in CI) and the bundled
Q4_1 GGUF, the GPTQ dir with the default quantization="auto" (its own format, int4 kernel), the GGUF
with quantization="gguf" (Q4 blocks into the int4 kernel; "auto" picks int8 on a float32 CPU).

The served greedy text must equal the same checkpoint's model driven directly in this process, and
the server log must name the quantization it chose.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.server_proc import REPO, ServerProc, start_server
from tests.unit.model_fixtures import gguf_path

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PROMPT = "The capital of France is"
SERVER_ARGS = ["--backend", "native", "-o", "kv_cache_bytes=16777216", "-o", "max_num_seqs=4"]


def sluice(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "serve.cli", *args], cwd=REPO, check=True, capture_output=True)


@pytest.fixture(scope="module")
def gptq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gptq")
    sluice("models", "convert", gguf_path(), str(tmp / "hf"))
    # default options: symmetric, group 64 (128 does not divide SmolLM2's 576 inputs), as vLLM loads them
    sluice("quantize", "--method", "rtn", "--bits", "4", "--threads", "1", str(tmp / "hf"), str(tmp / "smollm2-rtn-int4"))
    return tmp / "smollm2-rtn-int4"


def _serve(args: list[str], tmp: Path) -> Iterator[ServerProc]:
    s = start_server([*SERVER_ARGS, *args], tmp, timeout_s=300)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gptq_server(gptq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    yield from _serve(["--model", str(gptq_dir)], tmp_path_factory.mktemp("gptq-srv"))


@pytest.fixture(scope="module")
def gguf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    gguf_path()  # skips when the bundled model is not pulled
    yield from _serve(["-o", "quantization=gguf"], tmp_path_factory.mktemp("gguf-srv"))


def _client(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=180)


def _served_greedy(server: ServerProc, tokens: int) -> str:
    client = _client(server)
    model = client.models.list().data[0].id
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=tokens, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == tokens
    return r.choices[0].text


def _direct_greedy(path: str, tokens: int, quant: str = "auto") -> str:
    """The same checkpoint and options in this process: the engine the server runs (prefill, then
    decode steps through the KV cache), without HTTP. On CPUs the block kernels quantize activations
    to int8 (as llama.cpp does), so a prefill-only recomputation of every prefix (another attention
    path, float-rounding apart) can flip a near-tied greedy token; the numerics against the
    dequantized reference are checked in tests/unit/test_quantized_model_real.py."""
    from serve.engine.config import EngineConfig
    from serve.engine.engine import LLMEngine
    from serve.models.loader import load_tokenizer
    from serve.sampling_params import SamplingParams

    tok = load_tokenizer(path)
    options = {"quantization": quant, "kv_cache_bytes": 16777216, "max_num_seqs": 4}
    engine = LLMEngine.from_config(EngineConfig.from_options(path, options))
    outs = engine.generate([list(tok(PROMPT)["input_ids"])],
                           SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))[0]
    ids = [t for o in outs for t in o.new_token_ids]
    assert len(ids) == tokens
    return str(tok.decode(ids, skip_special_tokens=True))


def test_gptq_checkpoint_serves_through_the_int4_kernel(gptq_server: ServerProc, gptq_dir: Path) -> None:
    text = _served_greedy(gptq_server, 8)
    assert "Paris" in text, text
    assert text == _direct_greedy(str(gptq_dir), 8)
    assert "quantization=gptq (requested auto)" in gptq_server.log_path.read_text()


def test_bundled_gguf_serves_its_quantized_blocks(gguf_server: ServerProc) -> None:
    text = _served_greedy(gguf_server, 8)
    assert "Paris" in text, text
    assert text == _direct_greedy(gguf_path(), 8, "gguf")
    log = gguf_server.log_path.read_text()
    assert "quantization=gguf (requested gguf)" in log
    assert "210 linear weights as Q4/Q8 blocks, 0 dequantized" in log
