"""LLMEngine: one synchronous step = schedule -> runner.execute -> update -> outputs.

The engine speaks token ids and dataclasses. It owns the scheduler and (when a tokenizer is given)
one incremental detokenizer per sample, which is what makes stop strings work.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from serve.engine import faults
from serve.engine.batch import RunnerOutput, SampledToken, ScheduledSeq, StepBatch
from serve.engine.config import EngineConfig, SchedulerConfig
from serve.engine.detokenizer import IncrementalDetokenizer, make_decode
from serve.engine.outputs import RequestOutput, make_output
from serve.engine.request import Request, RequestRejected
from serve.engine.scheduler import Scheduler
from serve.engine.structured_masks import step_grammars
from serve.sampling_params import ParamError, SamplingParams, check_params_ids, check_token_ids
from serve.spec_decode.config import SpecDecodeConfig
from serve.spec_decode.controller import SpecController
from serve.spec_decode.proposer import Proposer

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the engine needs of the data plane (serve.worker.model_runner.ModelRunner)."""

    num_blocks: int
    block_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    tokenizer: Any

    def execute(self, batch: StepBatch) -> RunnerOutput: ...


def sample_ids(req_id: str, n: int) -> list[str]:
    """Ids of the n samples of a client request: the id itself when n == 1."""
    return [req_id] if n == 1 else [f"{req_id}#{i}" for i in range(n)]


class LLMEngine:
    def __init__(self, runner: Runner, scheduler_config: SchedulerConfig | None = None,
                 enable_prefix_caching: bool = True, detokenize: bool = True,
                 speculative: SpecDecodeConfig | None = None, proposer: Proposer | None = None) -> None:
        self.runner = runner
        self.scheduler = Scheduler(scheduler_config or SchedulerConfig(), num_blocks=runner.num_blocks,
                                   block_size=runner.block_size, max_model_len=runner.max_model_len,
                                   enable_prefix_caching=enable_prefix_caching,
                                   eos_token_ids=tuple(runner.eos_token_ids))
        tokenizer = getattr(runner, "tokenizer", None)
        self._decode = make_decode(tokenizer) if detokenize and tokenizer is not None else None
        self._groups: dict[str, list[str]] = {}  # client request id -> its sample ids
        self.num_steps = 0
        self.last_step_size = 0  # sequences in the last scheduled batch
        self.spec = self._spec_controller(speculative, proposer)
        self._grammar_factory: Any = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        from serve.worker.model_runner import ModelRunner, RunnerConfig  # the data plane: torch

        runner = ModelRunner(RunnerConfig(**config.runner_kwargs()))
        proposer = None
        if config.speculative.speculative_method == "draft":
            from serve.spec_decode.draft_model import DraftModelProposer

            proposer = DraftModelProposer.for_target(runner, config.speculative, config.scheduler.max_num_seqs)
        return cls(runner, config.scheduler, config.cache.enable_prefix_caching, speculative=config.speculative,
                   proposer=proposer)

    def _spec_controller(self, config: SpecDecodeConfig | None, proposer: Proposer | None) -> SpecController | None:
        """Speculation is on when a proposer is given, or the config names one that needs no model."""
        config = config or SpecDecodeConfig()
        if proposer is None and config.speculative_method == "ngram":
            from serve.spec_decode.ngram_proposer import NgramProposer

            proposer = NgramProposer(config.prompt_lookup_max, config.prompt_lookup_min)
        if proposer is None:
            if config.speculative_method == "draft":
                raise ValueError("speculative_method=draft needs a draft model proposer")
            return None
        if config.speculative_method == "none":
            config = SpecDecodeConfig(speculative_method=proposer.name if proposer.name in ("ngram", "draft")
                                      else "draft", **_spec_knobs(config))
        rejection = getattr(self.runner, "rejection", None)
        if rejection is not None and hasattr(proposer, "draft_probs"):
            rejection.draft_probs = proposer  # q of sampled drafts, for exact rejection sampling
        return SpecController(config, proposer)

    def validate(self, num_prompt_tokens: int, params: SamplingParams,
                 prompt_token_ids: Sequence[int] = ()) -> int:
        """Resolved max_tokens, or RequestRejected. Reads only fixed sizes: safe from any thread.
        Token ids outside the vocabulary are refused here, so they never reach a shared step."""
        vocab = getattr(self.runner, "vocab_size", None)
        if vocab is not None:
            try:
                check_token_ids(prompt_token_ids, vocab, "prompt")
                check_params_ids(params, vocab)
            except ParamError as e:
                raise RequestRejected(str(e), param=e.param) from e
        spec = params.structured
        if spec is not None:
            try:
                self._grammars().matcher(spec)  # compiles once (cached): a bad grammar is this request's 400
            except ValueError as e:
                raise RequestRejected(f"invalid structured output constraint: {e}", param="response_format") from e
        return self.scheduler.resolve_max_tokens(num_prompt_tokens, params)

    def add_request(self, req_id: str, prompt_token_ids: Sequence[int], params: SamplingParams, *,
                    priority: int = 0, arrival_time: float | None = None,
                    extra_stop_token_ids: Sequence[int] = (), cache_salt: str | None = None) -> list[str]:
        """Queue a client request (n samples). Returns the sample ids. Raises RequestRejected."""
        if req_id in self._groups:
            raise ValueError(f"request id {req_id!r} is already in use")
        max_tokens = self.validate(len(prompt_token_ids), params, prompt_token_ids)
        if extra_stop_token_ids:
            merged = tuple(dict.fromkeys((*params.stop_token_ids, *extra_stop_token_ids)))
            params = dataclasses.replace(params, stop_token_ids=merged)
        ids = sample_ids(req_id, params.n)
        group = [Request(rid, list(prompt_token_ids), params, max_tokens, group_id=req_id, sample_index=i,
                         priority=priority, arrival_time=arrival_time, cache_salt=cache_salt)
                 for i, rid in enumerate(ids)]
        if self._decode is not None:
            for req in group:
                req.detokenizer = IncrementalDetokenizer(self._decode, req.prompt_token_ids, params.stop)
        spec = params.structured
        if spec is not None:
            for req in group:  # each sample walks the grammar on its own
                req.matcher = self._grammars().matcher(spec)
        self.scheduler.add_requests(group)
        self._groups[req_id] = ids
        return ids

    def abort_request(self, req_id: str) -> list[RequestOutput]:
        """Abort a client request (all its samples) or one sample id. Frees blocks now."""
        ids = self._groups.get(req_id, [req_id])
        outputs = [make_output(r, []) for r in self.scheduler.abort(ids)]
        self._forget(outputs)
        return outputs

    def abort_all(self) -> list[RequestOutput]:
        return [out for rid in list(self._groups) for out in self.abort_request(rid)]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        self.last_step_size = len(batch.seqs)
        if not batch.seqs:
            self.scheduler.requeue_finished_ids(batch.finished_req_ids)
            return []
        self.num_steps += 1
        faults.on_engine_step(self.num_steps)
        grammars = step_grammars(batch.seqs, self.scheduler.requests, lambda: self._grammars().vocab_size)
        if grammars is not None:
            batch = dataclasses.replace(batch, grammars=grammars)
        failed: list[RequestOutput] = []
        try:
            result = self.runner.execute(batch)
        except Exception as exc:  # noqa: BLE001 - find the sequence that caused it; the rest go on
            log.warning("model runner failed on a batch of %d (%s); isolating", len(batch.seqs), exc)
            batch, result, failed = self._isolate(batch)
        outputs = failed + [make_output(req, ids) for req, ids in self.scheduler.update(batch, result)]
        self._forget(outputs)
        if self.spec is not None:
            self.spec.step(self.scheduler)
        return outputs

    def _isolate(self, batch: StepBatch) -> tuple[StepBatch, RunnerOutput, list[RequestOutput]]:
        """Run each sequence of a failed batch alone: the ones that fail again are aborted with the
        error, the others keep their results. Re-running writes the same KV slots with the same
        values, so a half-done batched pass leaves nothing behind."""
        kept: list[ScheduledSeq] = []
        sampled: dict[str, list[SampledToken]] = {}
        failed: list[RequestOutput] = []
        finished_ids = batch.finished_req_ids
        for seq in batch.seqs:
            try:
                out = self.runner.execute(StepBatch([seq], finished_ids))
            except Exception as exc:  # noqa: BLE001 - this sequence alone fails
                log.warning("request %s failed in the model runner: %s", seq.req_id, exc)
                failed += self._fail([seq.req_id], f"model runner failed: {exc}")
                continue
            finally:
                finished_ids = []
            kept.append(seq)
            sampled.update(out.sampled)
        return StepBatch(kept), RunnerOutput(sampled), failed

    def _fail(self, req_ids: list[str], message: str) -> list[RequestOutput]:
        outputs = [make_output(r, [], error=message) for r in self.scheduler.abort(req_ids)]
        self._forget(outputs)
        return outputs

    def _forget(self, outputs: list[RequestOutput]) -> None:
        """Drop group bookkeeping once every sample of a group has finished."""
        for out in outputs:
            if out.finished and out.group_id in self._groups:
                ids = self._groups[out.group_id]
                if all(i not in self.scheduler.requests for i in ids):
                    del self._groups[out.group_id]

    def _grammars(self) -> Any:
        """The grammar factory for this model's tokenizer, built on first use (llguidance)."""
        if self._grammar_factory is None:
            from serve.structured.matcher import GrammarFactory

            self._grammar_factory = GrammarFactory.for_hf(self.runner.tokenizer)
        return self._grammar_factory

    def stats(self) -> dict[str, float | int]:
        stats = {**self.scheduler.stats(), "num_steps": self.num_steps}
        if self.spec is not None:
            stats.update(self.scheduler.spec_stats.as_stats())
        return stats

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[RequestOutput]]:
        """Run prompts to completion (tests, offline use). Returns every output, per prompt."""
        names = [f"gen-{i}" for i in range(len(prompts))]
        for name, prompt in zip(names, prompts, strict=True):
            self.add_request(name, prompt, params)
        collected: dict[str, list[RequestOutput]] = {n: [] for n in names}
        while self.has_unfinished():
            for out in self.step():
                collected[out.group_id].append(out)
        return [collected[n] for n in names]


def _spec_knobs(config: SpecDecodeConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in ("speculative_method", "speculative_model")}

