"""Both engines sample through one sampler: the same logits and requests through the llama.cpp engine's
glue (rows read in place from a buffer it does not own) and through the native runner's sampling give
the same tokens and logprobs, plain rows and speculative verification alike; the buffer is untouched."""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from serve.backends.llamacpp_sampling import StepSampler, ToSample
from serve.engine.batch import ScheduledSeq
from serve.sampling import Sampler
from serve.sampling_params import SamplingParams
from serve.spec_decode.rejection_sampler import RejectionSampler
from serve.worker.model_runner import ModelRunner

V = 96
PARAMS = [SamplingParams(temperature=0.0, logprobs=3),
          SamplingParams(temperature=0.8, top_p=0.9, seed=11),
          SamplingParams(temperature=1.1, top_k=7, min_p=0.05, seed=-5, repetition_penalty=1.3, logprobs=2),
          SamplingParams(temperature=0.0, frequency_penalty=0.5, logit_bias={4: 2.0}),
          SamplingParams(temperature=0.9, seed=3, presence_penalty=0.7)]
PROMPT, OUTPUT = [1, 2, 3], [4, 5, 4]


def llama_buffer(rows: int, seed: int = 0) -> tuple[np.ndarray, object]:
    """A float buffer standing in for llama.cpp's logits, and its llama_get_logits_ith."""
    buf = np.random.default_rng(seed).normal(0, 2, (rows, V)).astype(np.float32)
    return buf, lambda r: buf[r].ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def native_runner() -> ModelRunner:
    """The runner's sampling half alone (its model is not needed to sample given logits)."""
    runner = ModelRunner.__new__(ModelRunner)
    runner.sampler = Sampler()
    runner.rejection = RejectionSampler(runner.sampler)
    runner.device = torch.device("cpu")
    return runner


def native(runner: ModelRunner, logits: np.ndarray, seqs: list[ScheduledSeq]) -> dict[str, list]:
    rows_idx, rows = runner._logit_rows(seqs)
    assert len(rows_idx) == logits.shape[0]
    return runner._sample(torch.from_numpy(logits.copy()), seqs, rows, {})


def test_plain_rows_match_the_native_runner() -> None:
    buf, ith = llama_buffer(len(PARAMS))
    keep = buf.copy()
    step = StepSampler(ith, V, "raw_logprobs", lambda: V)
    runner = native_runner()
    for step_no in range(3):  # generators persist across steps in both
        got = step.sample([ToSample(f"k{i}", p, PROMPT, OUTPUT, 0, i) for i, p in enumerate(PARAMS)])
        seqs = [ScheduledSeq(f"k{i}", [7], 10, [0], 1, p, PROMPT, OUTPUT) for i, p in enumerate(PARAMS)]
        want = native(runner, buf, seqs)
        assert got == [want[f"k{i}"] for i in range(len(PARAMS))], step_no
        assert got[0][0].logprob is not None and len(got[0][0].top_logprobs) == 3
    assert np.array_equal(buf, keep)  # llama.cpp's buffer is read, never written


def test_speculative_verification_matches_the_native_rejection_sampler() -> None:
    params = SamplingParams(temperature=0.7, top_k=20, seed=21, repetition_penalty=1.2)
    drafts = [9, 17, 3]
    buf, ith = llama_buffer(len(drafts) + 1, seed=4)
    buf[0, 9] += 6.0  # the first draft likely, so later rows matter too
    step = StepSampler(ith, V, "raw_logprobs", lambda: V)
    runner = native_runner()
    for _ in range(20):
        got = step.sample([ToSample("job", params, PROMPT, OUTPUT, 2, 0, drafts)])[0]
        seq = ScheduledSeq("job", [5, *drafts], 10, [0], len(drafts) + 1, params, PROMPT, OUTPUT, sample_index=2)
        assert got == native(runner, buf, [seq])["job"]


def test_rows_are_read_in_place_when_they_lie_together() -> None:
    buf, ith = llama_buffer(4)
    step = StepSampler(ith, V, "raw_logprobs", lambda: V)
    view = step.logits([1, 2, 3])
    assert view.data_ptr() == buf[1].ctypes.data and torch.equal(view, torch.from_numpy(buf[1:]))
    gathered = step.logits([0, 2])  # not adjacent: a copy
    assert gathered.data_ptr() != buf[0].ctypes.data and torch.equal(gathered, torch.from_numpy(buf[[0, 2]]))
