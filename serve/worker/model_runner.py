"""ModelRunner: the data plane. One StepBatch in, one forward over every scheduled token, samples out.

It owns the model, the paged KV cache (per layer K and V, [num_blocks, block_size, Hkv, D]) and the
sampler's per-request generators. It keeps no other per-request state: the scheduler's block tables
say where every position lives.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from serve.engine.batch import RunnerOutput, ScheduledSeq, StepBatch
from serve.models.loader import DTYPE_CHOICES, load_model, load_model_config, load_tokenizer
from serve.sampling import LOGPROBS_MODES, Sampler, SampleRow
from serve.spec_decode.rejection_sampler import RejectionSampler
from serve.worker.cuda_graphs import Capture, DecodeGraphs, capture_sizes, graphs_unavailable
from serve.worker.forward_context import build_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerConfig:
    model_path: str  # .gguf file or HF-style dir
    # "bfloat16" | "float32" | "float16" | "auto" (bf16 on CUDA and on CPUs with native bf16, else f32;
    # on an AVX2-only CPU bf16 matmuls are emulated and several times slower than f32)
    dtype: str = "auto"  # bf16 where the hardware has it (CUDA, AVX-512 BF16 / AMX), else f32
    device: str = "auto"  # "auto" -> cuda if available else cpu
    block_size: int = 16
    kv_cache_bytes: int = 1 << 30
    attention_backend: str = "auto"
    max_model_len: int | None = None  # default: model's context length
    num_threads: int | None = None  # torch threads on CPU; default all cores
    quantization: str = "auto"  # "auto": the checkpoint's own format (GPTQ, GGUF int4), else a quant method name
    # Decode steps replay captured CUDA graphs (CUDA with the triton attention backend; elsewhere
    # eager regardless). False: always eager, like vLLM's enforce_eager.
    cuda_graphs: bool = True
    max_graph_batch: int = 256  # largest decode batch captured; larger steps run eagerly
    logprobs_mode: str = "raw_logprobs"  # or "processed_logprobs" (serve/sampling/logprobs.py)

    def __post_init__(self) -> None:
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"unknown logprobs_mode {self.logprobs_mode!r}; choose one of: {', '.join(LOGPROBS_MODES)}")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPE_CHOICES)}")
        if self.block_size < 1 or self.kv_cache_bytes < 1:
            raise ValueError("block_size and kv_cache_bytes must be positive")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("max_model_len must be positive")
        if self.max_graph_batch < 1:
            raise ValueError(f"max_graph_batch must be >= 1, got {self.max_graph_batch}")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelRunner:
    def __init__(self, cfg: RunnerConfig) -> None:
        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        self.model_config = load_model_config(cfg.model_path)
        self.max_model_len = cfg.max_model_len or self.model_config.max_position_embeddings
        self.block_size = cfg.block_size
        self.vocab_size = self.model_config.vocab_size
        self.model = load_model(cfg.model_path, dtype=cfg.dtype, device=self.device,
                                attention_backend=cfg.attention_backend, max_positions=self.max_model_len,
                                block_size=cfg.block_size, quant=cfg.quantization)
        self.dtype = self.model.dtype  # "auto" resolves with the quant method (loader.load_model)
        self.num_blocks = self._allocate_kv_cache()
        self.tokenizer = load_tokenizer(cfg.model_path)
        eos = list(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.append(int(self.tokenizer.eos_token_id))
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        self.sampler = Sampler(self.device, logprobs_mode=cfg.logprobs_mode)
        self.rejection = RejectionSampler(self.sampler)  # sampled requests verifying drafts
        why_not = graphs_unavailable(cfg.cuda_graphs, self.device, self.model.backend)
        if why_not is not None:  # worth a line on CUDA only: elsewhere graphs never apply
            (log.info if self.device.type == "cuda" else log.debug)("CUDA graphs off: %s", why_not)
        self.graphs = None if why_not else self.capture_decode_graphs()  # None: every step runs eagerly

    def _allocate_kv_cache(self) -> int:
        mc = self.model_config
        dtype = self.model.dtype
        per_block = 2 * mc.num_layers * self.block_size * mc.num_kv_heads * mc.head_dim * dtype.itemsize
        num_blocks = self.cfg.kv_cache_bytes // per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_bytes={self.cfg.kv_cache_bytes} is less than one block ({per_block} bytes)")
        # One block more than the scheduler gets: the scratch block the padding rows of a decode
        # graph write to and read from (serve/worker/cuda_graphs.py).
        self.scratch_block = num_blocks
        shape = (num_blocks + 1, self.block_size, mc.num_kv_heads, mc.head_dim)
        # Zeroed, not empty: padded gathers read slots that were never written, and 0 * NaN would leak.
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device)) for _ in range(mc.num_layers)]
        self.model.bind_kv_cache(self.kv_caches)
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", num_blocks, self.block_size,
                 num_blocks * per_block / 2**20)
        return num_blocks

    # --- the forward pass: CUDA graphs for decode steps, eager otherwise ---------------------------

    def capture_decode_graphs(self, capture: Capture | None = None) -> DecodeGraphs | None:
        """Decode graphs at every size up to max_graph_batch, or None if capture failed. `capture`
        (default: torch.cuda.graph) lets CPU tests stand in `rerun_capture`."""
        max_blocks = -(-self.max_model_len // self.block_size)
        graphs = DecodeGraphs(self.model, self.block_size, self.scratch_block, max_blocks,
                              capture_sizes(self.cfg.max_graph_batch), self.device, capture)
        with torch.inference_mode():
            graphs.capture_all()
        return graphs if graphs.captured else None

    def _prepare_forward(self, seqs: list[ScheduledSeq]) -> Callable[[], torch.Tensor]:
        """The step's forward -> final hidden states [T, H], its inputs checked and on the device: a graph
        replay for a decode step that fits one, else the eager model call."""
        if self.graphs is not None:
            replay = self.graphs.prepare(seqs)
            if replay is not None:
                return replay
        ctx = build_context([len(s.token_ids) for s in seqs], [s.start_pos for s in seqs],
                            [s.block_table for s in seqs], self.block_size, self.device,
                            verify=[s.num_logits > 1 for s in seqs])
        input_ids = torch.tensor([t for s in seqs for t in s.token_ids], dtype=torch.int64, device=self.device)
        return lambda: self.model(input_ids, ctx.positions, ctx)

    def execute(self, batch: StepBatch) -> RunnerOutput:
        """One forward over all scheduled tokens; samples `num_logits` rows per sequence."""
        self.sampler.forget(batch.finished_req_ids)
        seqs = batch.seqs
        if not seqs:
            return RunnerOutput(sampled={})
        self._validate(seqs)
        forward = self._prepare_forward(seqs)
        rows, sample_rows = self._logit_rows(seqs)
        with torch.inference_mode():
            hidden = forward()
            if not rows:
                return RunnerOutput(sampled={s.req_id: [] for s in seqs})
            logits = self.model.compute_logits(hidden.index_select(0, torch.tensor(rows, device=self.device)))
            return RunnerOutput(sampled=self._sample(logits, seqs, sample_rows, batch.grammars or {}))

    def _sample(self, logits: torch.Tensor, seqs: list[ScheduledSeq], rows: list[SampleRow],
                grammars: Mapping[int, Any]) -> dict[str, list]:
        """Greedy and non-speculating rows: one token per row (the scheduler matches greedy rows against
        the drafts). Sampled rows verifying drafts: the rejection sampler, accepted drafts + one token.
        grammars: constrained sequences' grammars by their first row (the sampler masks or checks them)."""
        sampled: dict[str, list] = {s.req_id: [] for s in seqs}
        spec = {s.req_id for s in seqs if s.num_logits > 1 and not s.params.greedy}
        if spec:
            plain = [i for i, r in enumerate(rows) if r.req_id not in spec]
            verify = [i for i, r in enumerate(rows) if r.req_id in spec]
            sampled.update(self.rejection(logits[verify], [rows[i] for i in verify],
                                          [s for s in seqs if s.req_id in spec], _subset(grammars, verify)))
            if not plain:
                return sampled
            logits, rows, grammars = logits[plain], [rows[i] for i in plain], _subset(grammars, plain)
        for row, tok in zip(rows, self.sampler(logits, rows, grammars), strict=True):
            sampled[row.req_id].append(tok)
        return sampled

    @staticmethod
    def _logit_rows(seqs: list[ScheduledSeq]) -> tuple[list[int], list[SampleRow]]:
        """Packed-token rows whose logits are sampled, and what each row's sampler needs.

        Row j of a sequence's last `num_logits` predicts the token after token_ids[n - m + j]; the
        draft tokens before it (token_ids[n - m + 1 : n - m + 1 + j]) count as output for penalties.
        """
        rows: list[int] = []
        sample_rows: list[SampleRow] = []
        start = 0
        for s in seqs:
            n, m = len(s.token_ids), s.num_logits
            for j in range(m):
                rows.append(start + n - m + j)
                drafts = s.token_ids[n - m + 1:n - m + 1 + j]
                history = list(s.output_token_ids) + list(drafts) if drafts else s.output_token_ids
                sample_rows.append(SampleRow(s.req_id, s.params, s.prompt_token_ids, history, s.sample_index))
            start += n
        return rows, sample_rows

    def _validate(self, seqs: list[ScheduledSeq]) -> None:
        for s in seqs:
            n = len(s.token_ids)
            if n == 0:
                raise ValueError(f"request {s.req_id}: no tokens scheduled")
            if not 0 <= s.num_logits <= n:
                raise ValueError(f"request {s.req_id}: num_logits {s.num_logits} outside [0, {n}]")
            if s.start_pos + n > self.max_model_len:
                raise ValueError(f"request {s.req_id}: position {s.start_pos + n} exceeds max_model_len "
                                 f"{self.max_model_len}")
            if any(b < 0 or b >= self.num_blocks for b in s.block_table):
                raise ValueError(f"request {s.req_id}: block id outside [0, {self.num_blocks})")
            if min(s.token_ids) < 0 or max(s.token_ids) >= self.vocab_size:
                raise ValueError(f"request {s.req_id}: token id outside the vocabulary [0, {self.vocab_size})")


def _subset(grammars: Mapping[int, Any], kept: list[int]) -> dict[int, Any]:
    """Grammars re-keyed to their rows' positions in `kept` (a sequence's rows are kept together)."""
    pos = {row: j for j, row in enumerate(kept)}
    return {pos[row]: g for row, g in grammars.items() if row in pos}
