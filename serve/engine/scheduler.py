"""Token-budget scheduler (no prefill/decode phases).

Each step: running requests first, each gets the tokens it still has to compute (1 in decode, plus
its draft tokens, or the next prompt chunk), then waiting requests are admitted (prefix-cache lookup,
chunked prefill) while the token budget, `max_num_seqs` and free blocks allow. When a running request
cannot get a block, the newest (FCFS) or lowest-priority running request is preempted: its blocks
are freed and it goes back to the waiting queue to be recomputed (its own blocks usually come back
as prefix-cache hits). Cost per step is O(running requests + admitted requests).
"""

from __future__ import annotations

import time

from serve.engine.batch import RunnerOutput, ScheduledSeq, StepBatch
from serve.engine.config import SchedulerConfig
from serve.engine.kv_cache.manager import KVCacheManager
from serve.engine.request import Request, RequestRejected, RequestStatus
from serve.engine.request_queue import WaitingQueue
from serve.engine.stop_checker import StopChecker
from serve.sampling_params import SamplingParams
from serve.spec_decode.stats import SpecDecodeStats


class Scheduler:
    def __init__(self, config: SchedulerConfig, *, num_blocks: int, block_size: int, max_model_len: int,
                 enable_prefix_caching: bool = True, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.config = config
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching)
        self.stop_checker = StopChecker(eos_token_ids)
        self.waiting = WaitingQueue(config.policy)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        # Leader req_id -> its n > 1 siblings, held until the leader's prompt is computed.
        self.pending_siblings: dict[str, list[Request]] = {}
        self._finished_ids: list[str] = []
        self.num_preemptions = 0
        self.spec_stats = SpecDecodeStats()

    # ---- admission -------------------------------------------------------------------------------

    def resolve_max_tokens(self, num_prompt_tokens: int, params: SamplingParams) -> int:
        """The output-token limit for a request, or RequestRejected when it can never run here."""
        if num_prompt_tokens < 1:
            raise RequestRejected("the prompt is empty: at least one token is needed", param="prompt")
        # The last sampled token never needs a KV slot, hence the +1.
        cache_len = self.kv.num_blocks * self.block_size + 1
        limit = min(self.max_model_len, cache_len)
        if params.max_tokens is None:
            if num_prompt_tokens >= limit:
                raise RequestRejected(self._too_long(num_prompt_tokens, 1, limit), param="messages")
            return limit - num_prompt_tokens
        if num_prompt_tokens + params.max_tokens > limit:
            raise RequestRejected(self._too_long(num_prompt_tokens, params.max_tokens, limit),
                                  param="max_tokens")
        return params.max_tokens

    def _too_long(self, prompt: int, max_tokens: int, limit: int) -> str:
        where = "maximum context length" if limit == self.max_model_len else "KV cache capacity"
        return (f"This model's {where} is {limit} tokens. However, you requested {prompt + max_tokens} "
                f"tokens ({prompt} in the prompt, {max_tokens} for the completion). Please reduce the "
                f"prompt or max_tokens.")

    def add_requests(self, group: list[Request]) -> None:
        """Queue one client request: its n samples, leader first (the others wait for its prompt)."""
        for req in group:
            if req.req_id in self.requests:
                raise ValueError(f"request id {req.req_id!r} is already running")
        for req in group:
            self.requests[req.req_id] = req
        self.waiting.push(group[0])
        if len(group) > 1:
            self.pending_siblings[group[0].req_id] = list(group[1:])

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def requeue_finished_ids(self, ids: list[str]) -> None:
        """A step that was not executed: tell the runner about these finished ids next time."""
        self._finished_ids[:0] = ids

    # ---- one step --------------------------------------------------------------------------------

    def schedule(self) -> StepBatch:
        seqs: dict[str, ScheduledSeq] = {}
        budget, preempted = self._schedule_running(seqs, self.config.max_num_batched_tokens)
        if not preempted:
            self._schedule_waiting(seqs, budget)
        finished, self._finished_ids = self._finished_ids, []
        return StepBatch(seqs=list(seqs.values()), finished_req_ids=finished)

    def _schedule_running(self, seqs: dict[str, ScheduledSeq], budget: int) -> tuple[int, bool]:
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            drafts = self._drafts_for(req, num_new, budget)
            moved = False
            while not self.kv.allocate_slots(req, num_new + len(drafts)):
                if drafts:  # speculation is optional: drop it before taking blocks from anyone
                    drafts = []
                    continue
                victim = self._pick_victim()
                preempted = moved = True
                if victim.req_id in seqs:  # priority mode may pick one already scheduled this step
                    budget += len(seqs.pop(victim.req_id).token_ids)
                self._preempt(victim)
                if victim is req:
                    break
            if req.status is not RequestStatus.RUNNING:
                continue  # it preempted itself; the list shifted left onto the next request
            seqs[req.req_id] = self._make_seq(req, num_new, drafts)
            budget -= num_new + len(drafts)
            # Preemptions may have removed entries before i (priority mode): find our place again.
            i = self.running.index(req) + 1 if moved else i + 1
        return budget, preempted

    def _drafts_for(self, req: Request, num_new: int, budget: int) -> list[int]:
        """Draft tokens to verify this step: only when the request is at its end (decode), within the
        budget, and never more than its remaining output allows."""
        spec = req.spec_token_ids
        if not spec or req.num_computed_tokens + num_new != req.num_tokens:
            return []
        k = min(len(spec), budget - num_new, req.max_tokens - req.num_output_tokens - 1)
        return spec[:k] if k > 0 else []

    def _pick_victim(self) -> Request:
        if self.config.policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]

    def _schedule_waiting(self, seqs: dict[str, ScheduledSeq], budget: int) -> None:
        while self.waiting and budget > 0:
            req = self.waiting.peek()
            if len(self.running) >= self.config.max_num_seqs:
                freed = self._outrank(req, seqs)
                if freed is None:
                    return
                budget += freed
                continue
            hits, num_hit = [], 0
            looked_up = self.kv.num_blocks_of(req.req_id) == 0
            if looked_up:
                hits, num_hit = self.kv.get_computed_blocks(req)
            num_new = req.num_tokens - req.num_computed_tokens - num_hit
            if num_new > budget:
                # Without chunked prefill a prompt waits for a step of its own, then takes the whole
                # budget anyway rather than never running.
                if not self.config.enable_chunked_prefill and seqs:
                    return
                num_new = budget
            if not self.kv.allocate_slots(req, num_new, hits):
                freed = self._outrank(req, seqs)
                if freed is not None:
                    budget += freed
                    continue
                if seqs or self.running or not self._release_waiting_blocks():
                    return
                continue  # blocks held by queued samples were the obstacle: retry
            self._admit(req, num_hit, looked_up)
            seqs[req.req_id] = self._make_seq(req, num_new, [])
            budget -= num_new

    def _outrank(self, req: Request, seqs: dict[str, ScheduledSeq]) -> int | None:
        """Priority mode: preempt the lowest-ranked running request when `req` outranks it. Returns the
        budget its scheduled tokens gave back, or None when nothing was preempted."""
        if self.config.policy != "priority" or not self.running:
            return None
        victim = self._pick_victim()
        if (victim.priority, victim.arrival_time) <= (req.priority, req.arrival_time):
            return None
        seq = seqs.pop(victim.req_id, None)
        self._preempt(victim)
        return len(seq.token_ids) if seq is not None else 0

    def _admit(self, req: Request, num_hit: int, looked_up: bool) -> None:
        self.waiting.pop()
        if looked_up and self.kv.enable_caching:
            self.kv.record_prefix_query(req.num_tokens, num_hit)
        req.num_computed_tokens += num_hit
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = req.num_computed_tokens
            req.first_scheduled_time = time.monotonic()
        req.status = RequestStatus.RUNNING
        self.running.append(req)

    def _release_waiting_blocks(self) -> bool:
        """Nothing runs and the queue head cannot get blocks: free what queued requests hold (forked
        prompt blocks of n > 1 samples) so the head can go. False when there was nothing to free."""
        freed = False
        for req in self.waiting:
            if self.kv.num_blocks_of(req.req_id):
                self.kv.free(req)
                req.num_computed_tokens = 0
                freed = True
        return freed

    def _make_seq(self, req: Request, num_new: int, drafts: list[int]) -> ScheduledSeq:
        start = req.num_computed_tokens
        end = start + num_new
        token_ids = [req.all_token_ids[-1]] if end == req.num_tokens and num_new == 1 \
            else req.all_token_ids[start:end]
        if drafts:
            token_ids.extend(drafts)
        num_logits = 1 + len(drafts) if end == req.num_tokens else 0
        return ScheduledSeq(req_id=req.req_id, token_ids=token_ids, start_pos=start,
                            block_table=self.kv.block_ids(req.req_id), num_logits=num_logits,
                            params=req.params, prompt_token_ids=req.prompt_token_ids,
                            output_token_ids=req.output_token_ids, sample_index=req.sample_index)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.spec_token_ids = []
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push_front(req)

    # ---- after the step --------------------------------------------------------------------------

    def update(self, batch: StepBatch, output: RunnerOutput) -> list[tuple[Request, list[int]]]:
        """Apply one step's results. Returns (request, new token ids) for every request that produced
        tokens or finished this step."""
        results: list[tuple[Request, list[int]]] = []
        any_finished = False
        for seq in batch.seqs:
            req = self.requests.get(seq.req_id)
            if req is None or req.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            new_ids = self._apply(req, seq, output.sampled.get(seq.req_id, ()))
            if req.is_finished:
                any_finished = True
                self._release(req)
            if new_ids or req.is_finished:
                results.append((req, new_ids))
        if any_finished:
            self.running = [r for r in self.running if not r.is_finished]
        return results

    @staticmethod
    def _num_accepted(seq: ScheduledSeq, sampled: list | tuple) -> int:
        """Draft tokens confirmed by the samples: row j verifies draft j when it sampled that very
        token. Works whether the runner returns every row (greedy) or already cut the list after the
        first rejection (rejection sampler: accepted drafts + one corrected/bonus token)."""
        num_drafts = seq.num_logits - 1
        if num_drafts <= 0:
            return 0
        drafts = seq.token_ids[-num_drafts:]
        limit = min(num_drafts, len(sampled) - 1)
        n = 0
        while n < limit and sampled[n].token_id == drafts[n]:
            n += 1
        return n

    def _apply(self, req: Request, seq: ScheduledSeq, sampled: list | tuple) -> list[int]:
        num_drafts = max(seq.num_logits - 1, 0)
        num_accepted = self._num_accepted(seq, sampled)
        self.spec_stats.observe(req.req_id, num_drafts, num_accepted)
        sampled = sampled[:num_accepted + 1]
        # Rejected draft positions stay allocated but fall outside num_computed_tokens: rolled back.
        req.num_computed_tokens += len(seq.token_ids) - num_drafts + num_accepted
        new_ids: list[int] = []
        if seq.num_logits:
            req.spec_token_ids = []
            if req.req_id in self.pending_siblings:
                self._fork_siblings(req)
            want_logprobs = req.params.logprobs is not None
            for st in sampled:
                req.append_token(st.token_id)
                new_ids.append(st.token_id)
                if want_logprobs:
                    req.new_logprobs.append(st)
                status = self.stop_checker.check(req, st.token_id)
                if status is not None:
                    req.status = status
                    break
        self.kv.cache_full_blocks(req, req.num_computed_tokens)
        return new_ids

    def _fork_siblings(self, leader: Request) -> None:
        """The leader's prompt is computed: give each waiting sibling its full prompt blocks."""
        num_blocks = (leader.num_prompt_tokens - 1) // self.block_size
        for sib in reversed(self.pending_siblings.pop(leader.req_id)):
            sib.num_computed_tokens = self.kv.share_prefix(leader, sib, num_blocks)
            self.waiting.push_front(sib)

    def _release(self, req: Request) -> None:
        """A finished request leaves: blocks freed (full ones stay cached), runner told next step."""
        self.kv.free(req)
        self.requests.pop(req.req_id, None)
        self._finished_ids.append(req.req_id)
        orphans = self.pending_siblings.pop(req.req_id, None)
        for sib in orphans or ():
            self.waiting.push_front(sib)  # the leader left before its prompt was done

    def abort(self, req_ids: list[str]) -> list[Request]:
        """Finish requests as aborted and free their blocks now. Unknown ids are ignored."""
        aborted = []
        for rid in req_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished:
                continue
            was = req.status
            req.status = RequestStatus.FINISHED_ABORTED
            if was is RequestStatus.RUNNING:
                self.running.remove(req)
            elif not self.waiting.remove(req):
                for sibs in self.pending_siblings.values():
                    if req in sibs:
                        sibs.remove(req)
            self._release(req)
            aborted.append(req)
        return aborted

    def stats(self) -> dict[str, float | int]:
        waiting = len(self.waiting) + sum(len(s) for s in self.pending_siblings.values())
        return {"num_requests_running": len(self.running), "num_requests_waiting": waiting,
                "kv_cache_usage": self.kv.usage(), "prefix_cache_queries": self.kv.prefix_cache_queries,
                "prefix_cache_hits": self.kv.prefix_cache_hits, "num_preemptions": self.num_preemptions}
