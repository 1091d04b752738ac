"""Greedy token ids from vLLM for a checkpoint: run by the vLLM venv's python, not ours.

    $SLUICE_VLLM_PYTHON tests/e2e/vllm_greedy.py REQUEST.json

REQUEST.json: {"model": DIR, "prompts": [[token ids], ...], "max_tokens": N, "dtype": "float32"}.
Prints one JSON line on stdout, {"outputs": [[token ids], ...], "quantization": ...}. Prompts go in
as token ids so that vLLM and the native engine see the same input whatever each tokenizer setting.
Imports nothing from this repository: that venv holds vLLM's pins, not ours.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(request_path: str) -> int:
    from vllm import LLM, SamplingParams

    req = json.loads(Path(request_path).read_text())
    # enforce_eager: no graph capture to wait for; a small context keeps the KV cache allocation small
    llm = LLM(model=req["model"], dtype=req.get("dtype", "float32"), max_model_len=req.get("max_model_len", 256),
              enforce_eager=True, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=req["max_tokens"], ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in req["prompts"]], params, use_tqdm=False)
    quant = getattr(llm.llm_engine.model_config, "quantization", None)
    print(json.dumps({"outputs": [list(o.outputs[0].token_ids) for o in outs], "quantization": quant}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
