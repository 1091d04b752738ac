"""`draft` proposer: a second, cheaper model drafts k tokens per request (default: the target's own
checkpoint under a cheaper quant method, the "quantized self-draft").

KV layout: the draft model has its own paged KV cache with the target's geometry (same num_blocks and
block_size) plus a scratch area, so it addresses every verified position through the request's own
block table. Per request it remembers how many leading positions hold valid draft KV (`_computed`):
only verified tokens that landed in real blocks count. Each `propose` runs one forward over the
tokens it has not computed yet (a new request's prompt, the tokens accepted last step, the last
sampled token), then k - 1 one-token forwards for its own drafts. Positions past the real blocks go
to per-slot scratch blocks and are always recomputed later. A preempted request (new `epoch`) starts
over from position 0: its blocks were freed and may hold anything now.

Sampled requests draw each draft from the draft's processed distribution q (same temperature, top-k,
penalties, with the drafts so far as output history) with generators seeded apart from the target's;
q is kept for the runner's rejection sampler. Greedy requests take the draft's argmax (q = point mass).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from serve.engine.kv_cache.manager import cdiv
from serve.sampling import Sampler, SampleRow
from serve.spec_decode.config import DRAFT_QUANT_PREFERENCE, SpecDecodeConfig
from serve.spec_decode.proposer import ProposeInput
from serve.worker.forward_context import build_context

log = logging.getLogger(__name__)
DRAFT_SEED_OFFSET = 0x5DEECE66D  # the draft's generators must not replay the target's uniforms


def load_draft_model(path: str, quant: str, dtype: str, device: torch.device, max_positions: int,
                     block_size: int) -> tuple[torch.nn.Module, str]:
    """The draft model under `quant`, or with "auto" the first method of the preference list that
    loads this checkpoint. Returns (model, method used)."""
    from serve.models.loader import load_model

    methods = DRAFT_QUANT_PREFERENCE if quant == "auto" else (quant,)
    errors = []
    for method in methods:
        try:
            model = load_model(path, dtype=dtype, device=device, quant=method, max_positions=max_positions,
                               block_size=block_size)
            return model, method
        except (ValueError, RuntimeError, NotImplementedError) as e:
            errors.append(f"{method}: {e}")
    raise ValueError(f"no quant method loads the draft model {path}: {'; '.join(errors)}")


class DraftModelProposer:
    name = "draft"

    def __init__(self, model: torch.nn.Module, *, num_blocks: int, block_size: int, device: torch.device,
                 max_batch: int, k_max: int) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.num_blocks = num_blocks
        self.max_batch = max(1, max_batch)
        self.scratch_per_seq = cdiv(k_max, block_size) + 1
        self._allocate_kv(num_blocks + self.max_batch * self.scratch_per_seq)
        self.sampler = Sampler(device, seed_offset=DRAFT_SEED_OFFSET)
        self._computed: dict[str, tuple[int, int]] = {}  # req_id -> (epoch, positions with valid draft KV)
        self._q: dict[str, torch.Tensor] = {}  # req_id -> [k, V] q of its current drafts (sampled only)

    @classmethod
    def for_target(cls, runner: Any, config: SpecDecodeConfig, max_batch: int) -> DraftModelProposer:
        """A draft for a ModelRunner: `speculative_model` or the target's own checkpoint, quantized."""
        path = config.speculative_model or runner.cfg.model_path
        dtype = "float32" if runner.dtype == torch.float32 else "bfloat16"
        model, method = load_draft_model(path, config.speculative_quantization, dtype, runner.device,
                                         runner.max_model_len, runner.block_size)
        if model.cfg.vocab_size != runner.vocab_size:
            raise ValueError(f"draft model {path} has vocabulary {model.cfg.vocab_size}, the target "
                             f"{runner.vocab_size}: they must share a tokenizer")
        log.info("draft model %s loaded with quant method %s", path, method)
        if path == runner.cfg.model_path and method == getattr(runner.model, "quantization", None):
            log.warning("the self-draft uses the target's own quant method %s: it costs as much as the target", method)
        limit = config.speculative_disable_by_batch_size or max_batch
        return cls(model, num_blocks=runner.num_blocks, block_size=runner.block_size, device=runner.device,
                   max_batch=min(limit, max_batch), k_max=config.num_speculative_tokens)

    def _allocate_kv(self, num_blocks: int) -> None:
        cfg = self.model.cfg
        shape = (num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim)
        dtype = self.model.dtype
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device)) for _ in range(cfg.num_layers)]
        self.model.bind_kv_cache(self.kv_caches)

    def forget(self, req_ids: Sequence[str]) -> None:
        for rid in req_ids:
            self._computed.pop(rid, None)
            self._q.pop(rid, None)
        self.sampler.forget(req_ids)

    def draft_probs(self, req_id: str) -> torch.Tensor | None:
        return self._q.get(req_id)

    def propose(self, inputs: Sequence[ProposeInput]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(inputs), self.max_batch):
            out.extend(self._propose_chunk(inputs[start:start + self.max_batch]))
        return out

    def _propose_chunk(self, inputs: Sequence[ProposeInput]) -> list[list[int]]:
        tables = [self._table(i, slot) for slot, i in enumerate(inputs)]
        starts = [self._start(i) for i in inputs]
        lens = [len(i.token_ids) for i in inputs]
        tokens = [list(i.token_ids[s:]) for i, s in zip(inputs, starts, strict=True)]
        logits = self._forward(tokens, starts, tables)
        for i, n in zip(inputs, lens, strict=True):
            self._computed[i.req_id] = (i.epoch, min(n, len(i.block_table) * self.block_size))
        drafts: list[list[int]] = [[] for _ in inputs]
        probs: list[list[torch.Tensor]] = [[] for _ in inputs]
        active = list(range(len(inputs)))
        for j in range(max(i.k for i in inputs)):
            self._choose(logits, [inputs[a] for a in active], [drafts[a] for a in active], [probs[a] for a in active])
            active = [a for a in active if len(drafts[a]) < inputs[a].k]
            if not active:
                break
            logits = self._forward([[drafts[a][-1]] for a in active], [lens[a] + j for a in active],
                                   [tables[a] for a in active])
        for i, p in zip(inputs, probs, strict=True):
            if p:
                self._q[i.req_id] = torch.stack(p)
            else:
                self._q.pop(i.req_id, None)
        return drafts

    def _start(self, inp: ProposeInput) -> int:
        epoch, n = self._computed.get(inp.req_id, (inp.epoch, 0))
        return min(n, len(inp.token_ids) - 1) if epoch == inp.epoch else 0

    def _table(self, inp: ProposeInput, slot: int) -> list[int]:
        first = self.num_blocks + slot * self.scratch_per_seq
        return [*inp.block_table, *range(first, first + self.scratch_per_seq)]

    def _forward(self, tokens: list[list[int]], starts: list[int], tables: list[list[int]]) -> torch.Tensor:
        """One packed forward; returns the logits [len(tokens), V] float32 of each sequence's last token."""
        ctx = build_context([len(t) for t in tokens], starts, tables, self.block_size, self.device)
        ids = torch.tensor([t for ts in tokens for t in ts], dtype=torch.int64, device=self.device)
        last = torch.tensor(ctx.query_start, device=self.device) + torch.tensor(
            [len(t) - 1 for t in tokens], device=self.device)
        with torch.inference_mode():
            hidden = self.model(ids, ctx.positions, ctx)
            return self.model.compute_logits(hidden.index_select(0, last))

    def _choose(self, logits: torch.Tensor, inputs: list[ProposeInput], drafts: list[list[int]],
                probs: list[list[torch.Tensor]]) -> None:
        """Append one draft per input: argmax for greedy requests, a draw from q for sampled ones."""
        rows = [SampleRow(i.req_id, i.params, i.token_ids[:i.num_prompt_tokens],
                          [*i.output_token_ids, *d], i.sample_index) for i, d in zip(inputs, drafts, strict=True)]
        with torch.inference_mode():
            chosen, q = self.sampler.propose(logits, rows)
        for d, p, t, row_q in zip(drafts, probs, chosen, q, strict=True):
            d.append(t)
            if row_q is not None:
                p.append(row_q)
