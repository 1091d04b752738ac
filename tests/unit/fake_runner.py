"""FAKE model runner for tests ABOUT scheduling and KV bookkeeping (not about the model).

It keeps a fake paged KV cache that stores token ids in (block, offset) slots. Each step it writes the
scheduled tokens into the slots their block table names, then reads every context back through the
block table and picks the next token as a deterministic function of that context. A wrong block
table, a shared block overwritten, a cache hit on the wrong prefix or a slot read before it was
written changes (or breaks) the output, so "batched == one at a time" style comparisons catch
scheduler bugs the way a real model would.
"""

from __future__ import annotations

from serve.engine.batch import RunnerOutput, SampledToken, ScheduledSeq, StepBatch


def next_token(context: list[int], vocab_size: int) -> int:
    """Depends on every token and its position."""
    acc = 0
    for pos, tok in enumerate(context):
        acc = (acc * 1_000_003 + (pos + 1) * (tok + 7)) % 2_147_483_647
    return acc % vocab_size


class FakePagedRunner:
    def __init__(self, num_blocks: int, block_size: int = 4, max_model_len: int = 512,
                 vocab_size: int = 101, eos_token_ids: tuple[int, ...] = (), check: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.tokenizer = None
        self.check = check  # False: O(1) per token (overhead benchmarks), no KV simulation
        self.cut_at_rejection = True  # False: return every logits row, like a plain greedy sampler
        self.slots: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.batches: list[StepBatch] = []
        self.finished_seen: list[str] = []

    def execute(self, batch: StepBatch) -> RunnerOutput:
        self.batches.append(batch)
        self.finished_seen.extend(batch.finished_req_ids)
        if not self.check:
            return RunnerOutput({s.req_id: [SampledToken((s.token_ids[-1] * 31 + s.start_pos) % self.vocab_size,
                                                         -1.0)] for s in batch.seqs if s.num_logits})
        for seq in batch.seqs:
            self._write(seq)
        return RunnerOutput({s.req_id: self._sample(s) for s in batch.seqs if s.num_logits})

    def _slot(self, seq: ScheduledSeq, pos: int) -> tuple[int, int]:
        assert pos // self.block_size < len(seq.block_table), f"{seq.req_id}: position {pos} has no block"
        return seq.block_table[pos // self.block_size], pos % self.block_size

    def _write(self, seq: ScheduledSeq) -> None:
        for i, tok in enumerate(seq.token_ids):
            b, o = self._slot(seq, seq.start_pos + i)
            self.slots[b][o] = tok

    def _sample(self, seq: ScheduledSeq) -> list[SampledToken]:
        end = seq.start_pos + len(seq.token_ids)
        context = []
        for pos in range(end):
            b, o = self._slot(seq, pos)
            tok = self.slots[b][o]
            assert tok is not None, f"{seq.req_id}: read position {pos} before it was written"
            context.append(tok)
        out = []
        # Row j samples the token after position end - num_logits + j. Drafts: accept while they
        # match what this "model" would have produced (greedy verification).
        for j in range(seq.num_logits):
            tok = next_token(context[: end - seq.num_logits + j + 1], self.vocab_size)
            out.append(SampledToken(tok, logprob=-float(tok % 5)))
            draft_idx = len(seq.token_ids) - seq.num_logits + j + 1
            if self.cut_at_rejection and (draft_idx >= len(seq.token_ids) or seq.token_ids[draft_idx] != tok):
                break
        return out


def reference_continuation(prompt: list[int], num_tokens: int, vocab_size: int = 101,
                           eos_token_ids: tuple[int, ...] = ()) -> list[int]:
    """What one request alone, never chunked or preempted, must produce."""
    ctx = list(prompt)
    out: list[int] = []
    for _ in range(num_tokens):
        tok = next_token(ctx, vocab_size)
        out.append(tok)
        ctx.append(tok)
        if tok in eos_token_ids:
            break
    return out
