"""SpecController: between engine steps, decide who speculates, how many tokens, and ask the proposer.

Pure Python (the control plane). A request may speculate when it is running in decode (all but its
last sampled token computed), has room for more than one output token, did not opt out
(`SamplingParams.num_speculative_tokens == 0`), and the running batch is no larger than
`speculative_disable_by_batch_size` (beyond it a step is compute-bound and verifying k + 1 tokens per
request is no longer nearly free). With `speculative_adaptive`, k per request follows its last
verification: +1 after all drafts were accepted, else accepted + 1; after a verification that accepted
nothing the request also pauses proposing for 1, 2, 4, ... (at most 16) steps, reset by any acceptance,
so text with nothing to copy stops paying for failed drafts.

Reproducibility: greedy output never depends on speculation. A seeded sampled request draws k + 1
uniforms from its own generator per verification, so its tokens (always distributed exactly as
without speculation) repeat for the same seed under the same drafts: same settings, and a batch that
stays on the same side of the batch-size gate (adaptive k and the gate change the drafts).
"""

from __future__ import annotations

from serve.engine.request import Request, RequestStatus
from serve.engine.scheduler import Scheduler
from serve.spec_decode.config import SpecDecodeConfig
from serve.spec_decode.proposer import ProposeInput, Proposer

MAX_PAUSE = 16  # steps a request with failing drafts waits before proposing again (adaptive mode)


class SpecController:
    def __init__(self, config: SpecDecodeConfig, proposer: Proposer) -> None:
        self.config = config
        self.proposer = proposer
        self._k: dict[str, int] = {}  # adaptive k per request
        self._known: set[str] = set()  # requests the proposer may hold state for
        self._pause: dict[str, tuple[int, int]] = {}  # adaptive: req_id -> (steps left, next pause length)

    def step(self, scheduler: Scheduler) -> None:
        """After `scheduler.update`: drop state of departed requests, then propose for the next step."""
        self._forget_departed(scheduler)
        last = scheduler.spec_stats.last_step
        if self.config.speculative_adaptive:
            self._adapt(last)
        last.clear()
        limit = self.config.speculative_disable_by_batch_size
        if limit and len(scheduler.running) > limit:
            return
        inputs = [i for i in (self._input(scheduler, r) for r in scheduler.running) if i is not None]
        if not inputs:
            return
        self._known.update(i.req_id for i in inputs)
        drafts = self.proposer.propose(inputs)
        for inp, ids in zip(inputs, drafts, strict=True):
            scheduler.requests[inp.req_id].spec_token_ids = list(ids[:inp.k])

    def max_k(self, req: Request) -> int:
        k = self._k.get(req.req_id, self.config.num_speculative_tokens)
        override = req.params.num_speculative_tokens
        if override is not None:
            k = min(k, override)
        # Each step emits at least one token: more drafts than the remaining output minus one are waste.
        return min(k, req.max_tokens - req.num_output_tokens - 1)

    def _input(self, scheduler: Scheduler, req: Request) -> ProposeInput | None:
        if req.status is not RequestStatus.RUNNING or req.num_computed_tokens != req.num_tokens - 1:
            return None
        k = self.max_k(req)
        if k < 1 or self._paused(req.req_id):
            return None
        return ProposeInput(req_id=req.req_id, token_ids=req.all_token_ids, num_prompt_tokens=req.num_prompt_tokens,
                            k=k, params=req.params, block_table=scheduler.kv.block_ids(req.req_id),
                            sample_index=req.sample_index, epoch=req.num_preemptions)

    def _adapt(self, last: dict[str, tuple[int, int]]) -> None:
        top = self.config.num_speculative_tokens
        for rid, (drafted, accepted) in last.items():
            self._k[rid] = min(top, drafted + 1) if accepted == drafted else max(1, accepted + 1)
            if accepted:
                self._pause.pop(rid, None)
            else:
                length = self._pause.get(rid, (0, 1))[1]
                self._pause[rid] = (length, min(2 * length, MAX_PAUSE))

    def _paused(self, req_id: str) -> bool:
        left, length = self._pause.get(req_id, (0, 1))
        if left <= 0:
            return False
        self._pause[req_id] = (left - 1, length)
        return True

    def _forget_departed(self, scheduler: Scheduler) -> None:
        gone = [rid for rid in self._known if rid not in scheduler.requests]
        if gone:
            self.proposer.forget(gone)
            for rid in gone:
                self._known.discard(rid)
                self._k.pop(rid, None)
                self._pause.pop(rid, None)
