"""Speculation control plane and config: who proposes and how many (batch gate, per-request override,
adaptive k), config parsing, the vLLM --speculative-config mapping and the Prometheus counters.

The engine here runs on the FAKE paged runner (tests/unit/fake_runner.py), and drafts come from a FAKE
oracle proposer: these tests are about scheduling decisions and bookkeeping, not the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from serve.api.metrics import Metrics
from serve.backends.vllm import speculative_config, vllm_argv
from serve.engine.config import EngineConfig
from serve.engine.engine import LLMEngine
from serve.sampling_params import SamplingParams
from serve.spec_decode.config import SpecDecodeConfig
from serve.spec_decode.proposer import ProposeInput
from tests.unit.fake_runner import FakePagedRunner, reference_continuation

PROMPTS = {"good": [3, 1, 4, 1, 5], "bad": [2, 7, 1, 8], "off": [9, 9, 8]}


class OracleProposer:
    """FAKE proposer: drafts the true continuation for "good*" requests, a wrong one for "bad*"."""

    name = "draft"

    def __init__(self) -> None:
        self.calls: list[list[ProposeInput]] = []

    def propose(self, inputs: Sequence[ProposeInput]) -> list[list[int]]:
        self.calls.append(list(inputs))
        out = []
        for i in inputs:
            prompt = list(i.token_ids[:i.num_prompt_tokens])
            done = len(i.token_ids) - i.num_prompt_tokens
            truth = reference_continuation(prompt, done + i.k)[done:]
            out.append(truth if i.req_id.startswith("good") else [(t + 1) % 101 for t in truth])
        return out

    def forget(self, req_ids: Sequence[str]) -> None:
        pass


def engine_with(config: SpecDecodeConfig, proposer: OracleProposer, num_blocks: int = 64) -> LLMEngine:
    return LLMEngine(FakePagedRunner(num_blocks), speculative=config, proposer=proposer)


def drive(engine: LLMEngine, reqs: dict[str, SamplingParams]) -> dict[str, list[int]]:
    for rid, params in reqs.items():
        engine.add_request(rid, PROMPTS[rid.rstrip("0123456789")], params)
    got: dict[str, list[int]] = {r: [] for r in reqs}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.group_id].extend(out.new_token_ids)
    return got


def greedy(n: int = 12, k: int | None = None) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, num_speculative_tokens=k)


def test_outputs_exact_and_per_request_override_and_no_leaks() -> None:
    proposer = OracleProposer()
    engine = engine_with(SpecDecodeConfig(speculative_method="draft", num_speculative_tokens=3), proposer)
    got = drive(engine, {"good": greedy(), "bad": greedy(k=1), "off": greedy(k=0)})
    for rid, toks in got.items():
        assert toks == reference_continuation(PROMPTS[rid], 12)
    seen = {i.req_id: i.k for call in proposer.calls for i in call}
    assert "off" not in seen and seen["bad"] == 1 and seen["good"] <= 3
    s = engine.scheduler.spec_stats
    assert s.num_accepted_tokens > 0 and s.num_draft_tokens > s.num_accepted_tokens
    assert engine.scheduler.kv.num_free_blocks() == 64
    assert engine.stats()["spec_decode_num_drafts"] == s.num_drafts


def test_batch_gate_stops_proposals_above_the_limit() -> None:
    proposer = OracleProposer()
    config = SpecDecodeConfig(speculative_method="draft", speculative_disable_by_batch_size=2)
    engine = engine_with(config, proposer)
    got = drive(engine, {"good1": greedy(4), "good2": greedy(8), "good3": greedy(30)})
    assert all(len(call) <= 2 for call in proposer.calls) and proposer.calls
    assert got["good3"] == reference_continuation(PROMPTS["good"], 30)


def test_adaptive_k_grows_on_acceptance_shrinks_and_pauses_on_rejection() -> None:
    proposer = OracleProposer()
    config = SpecDecodeConfig(speculative_method="draft", num_speculative_tokens=4, speculative_adaptive=True)
    drive(engine_with(config, proposer), {"good": greedy(40), "bad": greedy(40)})
    ks = {rid: [i.k for call in proposer.calls for i in call if i.req_id == rid] for rid in ("good", "bad")}
    assert ks["good"][:3] == [4, 4, 4] and ks["bad"][1:3] == [1, 1]
    # ~40 one-token steps, but failing drafts pause proposing for 1, 2, 4, ... 16 steps: few proposals.
    assert len(ks["bad"]) < 10


def test_engine_options_from_strings_and_errors() -> None:
    cfg = EngineConfig.from_options("m", {"speculative_method": "draft", "num_speculative_tokens": "3",
                                          "speculative_model": "none", "speculative_adaptive": "true",
                                          "speculative_disable_by_batch_size": "0"}).speculative
    assert (cfg.speculative_method, cfg.num_speculative_tokens, cfg.speculative_model, cfg.speculative_adaptive,
            cfg.speculative_disable_by_batch_size) == ("draft", 3, None, True, 0)
    with pytest.raises(ValueError, match="speculative_method"):
        EngineConfig.from_options("m", {"speculative_method": "medusa"})
    with pytest.raises(ValueError, match="prompt_lookup"):
        EngineConfig.from_options("m", {"speculative_method": "ngram", "prompt_lookup_min": "5",
                                        "prompt_lookup_max": "2"})
    with pytest.raises(ValueError, match="needs speculative_method=draft"):
        SpecDecodeConfig(speculative_model="/x")
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SamplingParams(num_speculative_tokens=-1)


def test_vllm_speculative_config_from_the_same_keys() -> None:
    d = Path("/models/target")
    assert speculative_config({"speculative_method": "ngram", "num_speculative_tokens": "5",
                               "prompt_lookup_max": 3, "prompt_lookup_min": 2}, d) == {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3, "prompt_lookup_min": 2}
    assert speculative_config({"speculative_method": "draft", "speculative_disable_by_batch_size": 4}, d) == {
        "model": str(d), "num_speculative_tokens": 4, "disable_by_batch_size": 4}
    assert speculative_config({"speculative_method": "draft", "speculative_model": "/small"}, d)["model"] == "/small"
    assert speculative_config({"speculative_config": '{"method": "ngram"}'}, d) == {"method": "ngram"}
    assert speculative_config({}, d) is None
    with pytest.raises(ValueError, match="not both"):
        speculative_config({"speculative_config": "{}", "speculative_method": "ngram"}, d)
    with pytest.raises(ValueError, match="need speculative_method"):
        speculative_config({"num_speculative_tokens": 3}, d)
    argv = vllm_argv("py", d, "m", 1, {"speculative_method": "ngram"})
    assert json.loads(argv[argv.index("--speculative-config") + 1])["method"] == "ngram"


def test_spec_stats_render_as_counters_with_positions() -> None:
    stats = {"spec_decode_num_drafts": 3, "spec_decode_num_draft_tokens": 9, "spec_decode_num_accepted_tokens": 4,
             "spec_decode_num_accepted_tokens_per_pos.0": 3, "spec_decode_num_accepted_tokens_per_pos.1": 1}
    text = Metrics(lambda: [("m", "r", stats)]).render().decode()
    assert 'sluice:spec_decode_num_drafts_total{model="m",replica="r"} 3.0' in text
    assert "# TYPE sluice:spec_decode_num_accepted_tokens_total counter" in text
    assert 'sluice:spec_decode_num_accepted_tokens_per_pos_total{model="m",position="1",replica="r"} 1.0' in text
