"""Native model == Hugging Face transformers on the same weights (the bundled GGUF, float32).

transformers dequantizes the GGUF itself and runs its own Llama; we load the same file with our
reader (including the Q/K un-permutation) and run packed-batch forward passes through the runner.
"""

from __future__ import annotations

import pytest
import torch

from serve.engine.batch import ScheduledSeq, StepBatch
from serve.sampling_params import SamplingParams
from tests.unit.model_fixtures import hf_model, runner

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a village by the mountains, there lived an old clockmaker who " * 12,
]
NEW_TOKENS = 12


def native_greedy(ids: list[int], table_start: int) -> list[int]:
    r = runner()
    params = SamplingParams(temperature=0.0)
    table = list(range(table_start, table_start + (len(ids) + NEW_TOKENS) // 16 + 1))
    out = [r.execute(StepBatch([ScheduledSeq("g", ids, 0, table, 1, params, ids, [])])).sampled["g"][0].token_id]
    for step in range(NEW_TOKENS - 1):
        if out[-1] in r.eos_token_ids:
            break
        seq = ScheduledSeq("g", [out[-1]], len(ids) + step, table, 1, params, ids, out)
        out.append(r.execute(StepBatch([seq])).sampled["g"][0].token_id)
    r.execute(StepBatch([], finished_req_ids=["g"]))
    return out


def hf_greedy(ids: list[int]) -> list[int]:
    with torch.inference_mode():
        out = hf_model().generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                  eos_token_id=list(runner().eos_token_ids), pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "chat", "long"])
def test_greedy_tokens_match_transformers(prompt: str) -> None:
    ids = runner().tokenizer(prompt).input_ids
    assert native_greedy(ids, 0) == hf_greedy(ids)


@pytest.mark.slow
def test_prompt_logits_close_to_transformers() -> None:
    r = runner()
    ids = r.tokenizer(PROMPTS[2]).input_ids
    from serve.worker.forward_context import build_context

    ctx = build_context([len(ids)], [0], [list(range(100, 100 + len(ids) // 16 + 1))], r.block_size, r.device)
    with torch.inference_mode():
        ours = r.model.compute_logits(r.model(torch.tensor(ids), ctx.positions, ctx))
        theirs = hf_model()(torch.tensor([ids])).logits[0].float()
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-3)


def test_tokenizer_matches_transformers_gguf_tokenizer_and_has_chat_template() -> None:
    import os

    from transformers import AutoTokenizer

    from tests.unit.model_fixtures import gguf_path

    ours = runner().tokenizer
    path = gguf_path()
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    for text in PROMPTS:
        assert ours(text).input_ids == ref(text).input_ids
    assert ours.chat_template == ref.chat_template and "im_start" in ours.chat_template
    assert 2 in runner().eos_token_ids
