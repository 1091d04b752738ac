"""Every llama.cpp CPU variant this machine can run computes the same logits as the baseline AVX2
variant (to the rounding of a different ISA), through the real loader, one child process each: a
variant is chosen once per process, before llama.cpp starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sluice_kernels.cpu.features import cpu_info

from serve.backends.llamacpp_build import install_dir, is_built
from serve.backends.llamacpp_loader import VARIANTS, built_variants
from tests.unit.model_fixtures import gguf_path

pytestmark = pytest.mark.slow

_CHILD = """
import json, sys
from serve.backends.llamacpp_loader import load_llama_cpp, loaded_variant
llama_cpp = load_llama_cpp()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=2, verbose=False)
ids = llm.tokenize(b"The capital of France is Paris. The capital of Italy is")
llm.eval(ids)
print(json.dumps({"variant": loaded_variant().name, "logits": [float(v) for v in llm.scores[len(ids) - 1]]}))
"""


def _runnable_here() -> list[str]:
    if not is_built():
        pytest.fail("llama.cpp is not built: python -m serve.backends.llamacpp_build (make install does it)")
    built = built_variants(install_dir() / "cpu")
    info = cpu_info()
    return [name for name, needs in VARIANTS if name in built and info.has(*needs) and "amx_int8" not in needs]


def _logits(variant: str) -> np.ndarray:
    env = {**os.environ, "SLUICE_LLAMA_CPU_VARIANT": variant}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(gguf_path())], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["variant"] == variant
    return np.asarray(out["logits"], dtype=np.float64)


def test_variants_agree_with_the_avx2_baseline() -> None:
    runnable = _runnable_here()
    if "haswell" not in runnable:
        pytest.skip("this CPU has no AVX2: only the x64 variant runs")
    base = _logits("haswell")
    others = [v for v in runnable[:2] if v != "haswell"] or ["x64"]
    for variant in others:
        got = _logits(variant)
        assert int(np.argmax(got)) == int(np.argmax(base)), variant
        # Different SIMD widths sum in different orders; Q8 activations make that a few percent at most.
        assert np.abs(got - base).max() <= 0.05 * np.abs(base).max(), variant
