"""llama.cpp backend speculative decoding: option parsing and the sampled verify rule's exactness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve.backends.llamacpp import LlamaCppBackend
from serve.backends.llamacpp_spec import PromptLookupConfig, SpecState, spec_config_from_options
from serve.config import ReplicaSpec
from serve.sampling import DraftGroup, Sampler, SampleRow
from serve.sampling.rejection import rejection_sample
from serve.sampling_params import SamplingParams


def test_options_to_config() -> None:
    assert spec_config_from_options({}) is None
    assert spec_config_from_options({"n_parallel": 4, "speculative_method": "none"}) is None
    cfg = spec_config_from_options({"speculative_method": "ngram", "num_speculative_tokens": "6",
                                    "prompt_lookup_max": "5", "prompt_lookup_min": 3,
                                    "speculative_disable_by_batch_size": "4", "speculative_adaptive": "false"})
    assert cfg == PromptLookupConfig(6, 5, 3, 4, adaptive=False)
    assert spec_config_from_options({"speculative_method": "NGRAM"}) == PromptLookupConfig()
    assert cfg.active(4) and not cfg.active(5)  # disabled above the limit, as in the native engine
    assert PromptLookupConfig().active(1000)


@pytest.mark.parametrize(("options", "names"), [
    ({"speculative_method": "draft"}, "speculative_method"),
    ({"speculative_method": "eagle"}, "speculative_method"),
    ({"num_speculative_tokens": 4}, "num_speculative_tokens"),
    ({"speculative_method": "ngram", "num_speculative_tokens": "four"}, "num_speculative_tokens"),
    ({"speculative_method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"speculative_method": "ngram", "num_speculative_tokens": 33}, "num_speculative_tokens"),
    ({"speculative_method": "ngram", "speculative_adaptive": "maybe"}, "speculative_adaptive"),
    ({"speculative_method": "ngram", "speculative_model": "x.gguf"}, "speculative_model"),
    ({"speculative_method": "ngram", "prompt_lookup_max": 1, "prompt_lookup_min": 2}, "prompt_lookup_max"),
    ({"speculative_method": "ngram", "speculative_disable_by_batch_size": -1}, "speculative_disable_by_batch_size"),
])
def test_bad_options_name_the_key(options: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        spec_config_from_options(options)


def test_backend_rejects_at_construction() -> None:
    """Config errors surface when the replica is built (server startup), before any model load."""
    with pytest.raises(ValueError, match="speculative_method"):
        LlamaCppBackend(ReplicaSpec(options={"speculative_method": "draft"}))
    with pytest.raises(ValueError, match="unknown llamacpp option"):
        LlamaCppBackend(ReplicaSpec(options={"speculative_tokens": 4}))
    b = LlamaCppBackend(ReplicaSpec(options={"speculative_method": "ngram", "n_parallel": "2"}))
    assert b.spec_config == PromptLookupConfig()


def test_spec_state_history_proposes_from_prompt_and_output() -> None:
    st = SpecState.for_prompt([5, 6, 7, 8, 9], max_new=4)
    st.append(5)
    st.append(6)
    cfg = PromptLookupConfig(num_speculative_tokens=3, prompt_lookup_max=2, prompt_lookup_min=2)
    assert st.propose(cfg, 3) == [7, 8, 9]
    assert st.propose(cfg, 0) == []
    for t in range(10):  # beyond capacity: ignored, never an overflow
        st.append(t)
    assert st.n == st.buf.shape[0]


_CHI2_DF3_P001 = 16.27  # chi-square critical value, 3 degrees of freedom, p = 0.001


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _target(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """The sampler's distribution written out independently: softmax(logits / T) over the top k."""
    keep = np.argsort(-logits)[:top_k]
    p = np.zeros_like(logits, dtype=np.float64)
    e = np.exp((logits[keep] - logits[keep].max()) / temperature)
    p[keep] = e / e.sum()
    return p


def _verify(sampler: Sampler, logits: np.ndarray, params: SamplingParams, drafts: list[int]) -> list[int]:
    """What the llama.cpp engine runs for a speculating job: the shared sampler's verify over its rows."""
    rows = [SampleRow("job", params, [], list(drafts[:j])) for j in range(len(drafts) + 1)]
    lg = torch.from_numpy(np.tile(logits, (len(drafts) + 1, 1)))
    return [t.token_id for t in sampler.verify(lg, rows, [DraftGroup(drafts)])[0]]


@pytest.mark.parametrize("draft", [0, 3, 5])  # the likeliest token, a likely one, one cut by top_k
def test_sampled_verify_preserves_the_target_distribution(draft: int) -> None:
    logits = np.array([2.0, 0.5, 1.0, 1.5, -1.0, -3.0], dtype=np.float32)
    params = SamplingParams(temperature=0.8, top_k=4, seed=1234)
    sampler = Sampler()
    n = 4_000
    counts = np.bincount([_verify(sampler, logits, params, [draft])[0] for _ in range(n)], minlength=6)
    target = _target(logits.astype(np.float64), 0.8, 4)
    support = target > 0
    assert counts[~support].sum() == 0  # a truncated draft is never emitted
    assert _chi2(counts[support], target[support]) < _CHI2_DF3_P001
    # The test has power: the naive rule "accept the draft w.p. p(d), else draw from p" (no removal of
    # the draft's mass) over-weights the draft and fails it.
    rng = np.random.default_rng(1234)
    naive = [draft if rng.random() < target[draft] else int(rng.choice(6, p=target)) for _ in range(n)]
    if target[draft] > 0:
        assert _chi2(np.bincount(naive, minlength=6)[support], target[support]) > _CHI2_DF3_P001


def test_point_draft_edge_cases() -> None:
    certain = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.25] * 4])
    u = torch.tensor([0.999, 0.5])
    assert rejection_sample(certain, torch.tensor([2]), None, u)[0] == 2  # p(draft) = 1: always kept
    assert rejection_sample(certain, torch.tensor([1]), None, u) == [2]  # p(draft) = 0: never kept
    split = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25] * 4])
    for x in (0.0, 0.3, 0.7, 0.999):  # draft 0 rejected (u >= 0.5): the rest of p is token 2 alone
        assert rejection_sample(split, torch.tensor([0]), None, torch.tensor([0.6, x])) == [2]


def test_greedy_verify_is_the_argmax() -> None:
    logits = np.array([0.1, 3.0, 0.2], dtype=np.float32)
    greedy = SamplingParams(temperature=0.0)
    assert _verify(Sampler(), logits, greedy, [1]) == [1, 1]  # accepted, then the bonus token
    assert _verify(Sampler(), logits, greedy, [2]) == [1]  # refused: the argmax instead


def test_draft_length_follows_acceptance() -> None:
    st = SpecState.for_prompt([1, 2, 3], max_new=8)
    start = st.draft_len(8)
    assert 1 <= start < 8  # the prior is optimistic but not certain
    for _ in range(10):  # copying: everything accepted -> full length
        st.record(4, 4)
    assert st.draft_len(8) == 8 and st.draft_len(3) == 3
    for _ in range(10):  # nothing accepted -> stop drafting, except one probe every few steps
        st.record(4, 0)
    lens = [st.draft_len(8) for _ in range(32)]
    assert set(lens) == {0, 1} and 2 <= lens.count(1) <= 8
    for _ in range(10):  # copying resumes (probes accepted) -> long drafts again
        st.record(1, 1)
    assert st.draft_len(8) >= 4
