"""Speculative decoding on the DEFAULT serving target: the bundled GGUF through the CPU kernels (int8
activations, float32 elsewhere), not float32 reference weights.

- Greedy: speculation (n-gram and the self-draft) equals plain decoding token for token, alone and
  in a mixed batch, including prefix-cache hits. Verify rows (k + 1 queries, marked as such in the
  forward context) run the decode kernel one row at a time, so each computes exactly what a plain
  decode step computes at that position.
- Sampled: the joint distribution of the first two output tokens under speculation (the second one
  goes through the rejection sampler) matches the target's own distribution (chi-square).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

from serve import model_store
from serve.engine.engine import LLMEngine
from serve.sampling_params import SamplingParams
from serve.spec_decode.config import SpecDecodeConfig
from tests.requirements import kernels_missing, model_missing, require
from tests.unit.test_spec_decode_real import MODEL, TEXTS, assert_no_leaks, run

pytestmark = pytest.mark.slow
EXTRA = ["The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick",
         "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
         "<|im_start|>user\nList the planets.<|im_end|>\n<|im_start|>assistant\n"]
GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def runner() -> Any:
    require("model", model_missing(MODEL))
    require("kernels", kernels_missing())  # the default target runs them; without, it is another path
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    r = ModelRunner(RunnerConfig(str(model_store.model_path(MODEL)), kv_cache_bytes=64 << 20, num_threads=2))
    assert getattr(r.model, "quantization", None) == "gguf"  # the default: what `sluice serve` runs
    return r


@pytest.fixture(scope="module")
def prompts(runner: Any) -> list[list[int]]:
    return [runner.tokenizer.encode(t) for t in TEXTS + EXTRA]


@pytest.fixture(scope="module")
def plain(runner: Any, prompts: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Plain greedy outputs: fresh, then with the prompts' full blocks served by the prefix cache.

    They may differ: on a hit only the prompt's tail is recomputed (a smaller SDPA call than the
    miss's whole-prompt one), and with int8 activations that can flip a near-tie. So speculation is
    compared like with like: fresh with fresh, hit with hit."""
    engine = LLMEngine(runner)
    return run(engine, prompts, [GREEDY] * len(prompts)), run(engine, prompts, [GREEDY] * len(prompts))


@pytest.mark.parametrize("method,k", [("ngram", 2), ("ngram", 4), ("draft", 3)])
def test_greedy_speculation_equals_plain_on_the_default_target(runner: Any, prompts: list[list[int]],
                                                               plain: tuple[list[list[int]], list[list[int]]],
                                                               method: str, k: int) -> None:
    fresh, hit = plain
    config = SpecDecodeConfig(speculative_method=method, num_speculative_tokens=k)
    proposer = None
    if method == "draft":
        from serve.spec_decode.draft_model import DraftModelProposer

        proposer = DraftModelProposer.for_target(runner, config, max_batch=8)
    engine = LLMEngine(runner, speculative=config, proposer=proposer)
    params = [GREEDY] * (len(prompts) - 1) + [SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                             num_speculative_tokens=0)]
    assert run(engine, prompts, params) == fresh
    assert run(engine, prompts, params) == hit  # again: now the prompts hit the prefix cache
    assert engine.scheduler.kv.prefix_cache_hits > 0
    assert [run(engine, [p], [GREEDY])[0] for p in prompts[:2]] == hit[:2]  # alone
    s = engine.scheduler.spec_stats
    assert s.num_drafts > 0 and 0 < s.num_accepted_tokens < s.num_draft_tokens  # some drafts were rejected
    assert_no_leaks(engine, runner.num_blocks)


# --- rejection sampling keeps the target's distribution ---------------------------------------------

PATTERN = "red green blue red green blue red green blue red green"
N_SAMPLES = 1200
TOP = 20  # target probabilities are read as top-20 logprobs; the rest of the mass is one cell


def _chi_square_p(observed: list[int], expected: list[float]) -> float:
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    df = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def _target_probs(runner: Any, prompt: list[int], params: SamplingParams) -> dict[int, float]:
    """The target's next-token distribution after `prompt` (plain engine, top-TOP logprobs)."""
    probe = SamplingParams(max_tokens=1, temperature=params.temperature, logprobs=TOP, seed=0)
    engine = LLMEngine(runner)
    engine.add_request("probe", prompt, probe)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    sampled = next(o.logprobs for o in outs if o.logprobs)[0]
    return {tok: math.exp(v) for tok, v in sampled.top_logprobs}


def test_speculative_sampling_keeps_the_target_distribution(runner: Any) -> None:
    prompt = runner.tokenizer.encode(PATTERN)
    # Four tokens, so the step after the first one can verify drafts; the pair (t1, t2) is tested.
    params = [SamplingParams(max_tokens=4, temperature=1.0, seed=1000 + i, ignore_eos=True) for i in range(N_SAMPLES)]
    config = SpecDecodeConfig(speculative_method="ngram", num_speculative_tokens=3, speculative_adaptive=False,
                              speculative_disable_by_batch_size=0)  # speculate in every batch
    engine = LLMEngine(runner, speculative=config)
    pairs = Counter(tuple(t[:2]) for t in run(engine, [prompt] * N_SAMPLES, params))
    s = engine.scheduler.spec_stats
    assert s.num_drafts > N_SAMPLES // 2 and 0 < s.num_accepted_tokens < s.num_draft_tokens
    first = _target_probs(runner, prompt, params[0])
    observed, expected = [], []
    other_obs, other_exp = 0, 0.0
    for t1, p1 in first.items():
        second = _target_probs(runner, prompt + [t1], params[0])
        for t2, p2 in second.items():
            e = N_SAMPLES * p1 * p2
            o = pairs.pop((t1, t2), 0)
            if e >= 5:
                observed.append(o)
                expected.append(e)
            else:
                other_obs, other_exp = other_obs + o, other_exp + e
    other_obs += sum(pairs.values())  # pairs outside the top-TOP x top-TOP cells
    other_exp = N_SAMPLES - sum(expected)
    observed.append(other_obs)
    expected.append(other_exp)
    assert len(observed) >= 4, "too few cells: the test would prove nothing"
    p = _chi_square_p(observed, expected)
    assert p > 1e-3, f"speculative samples do not follow the target (chi-square p = {p:.2g}): {observed} vs {expected}"
