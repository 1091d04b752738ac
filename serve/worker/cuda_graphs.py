"""CUDA graphs for decode steps: the model's forward captured once per padded batch size, then replayed.

Why: a decode step at small batch is launch-bound. Each layer issues ~15 kernels of a few microseconds
of work each, and the host spends longer launching them than the GPU spends running them; one graph
replay issues the whole forward at once.

What is captured: `model(input_ids, positions, ctx)` -> final hidden states [size, H], for all-decode
steps (every sequence computes exactly one token and samples one row: no prompt chunk, no speculative
verify rows), at each size of `capture_sizes` (1, 2, 4, 8, 16, 24, ... up to the largest). A step of
n sequences replays the smallest size >= n; rows n..size-1 are padding and their outputs are dropped.

Why replay is right: everything the captured forward reads lives in `DecodeBuffers`, device tensors
allocated once (token ids, positions, slot mapping, context lengths, and a block table wide enough for
max_model_len); a step copies its values into them and replays. The attention backend gets metadata
made of views of those buffers (`decode_metadata`), so nothing inside is built from Python lists,
syncs the host or changes shape between replays. A padding row computes token 0 at position 0 with a
context of one slot, the first slot of the scratch block (one block past those the scheduler hands
out): it writes and reads only that slot, and never a real sequence's KV.

Everything else runs eagerly (`prepare` returns None): prefill chunks, mixed and verify steps, batches
larger than the largest size, CPU, and attention backends without `decode_metadata` (only triton has
it: torch_sdpa and flash_attn size their metadata from the step's context lengths).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from serve.engine.batch import ScheduledSeq
from serve.worker.forward_context import ForwardContext

log = logging.getLogger(__name__)

# capture(fn) runs the forward `fn` into a captured form: (replay, out). replay() recomputes `out`
# in place from whatever the static buffers hold at that moment.
Capture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], Any], torch.Tensor]]


def capture_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to capture: 1, 2, 4, then every multiple of 8 below max_batch, then max_batch
    (vLLM's ladder: padding wastes under 8 rows, and ~max_batch / 8 graphs share one memory pool)."""
    if max_batch < 1:
        return ()
    small = [s for s in (1, 2, 4) if s < max_batch]
    return (*small, *range(8, max_batch, 8), max_batch)


def pick_size(n: int, sizes: Sequence[int]) -> int | None:
    """The smallest captured size that holds n rows, or None when n exceeds them all. sizes ascending."""
    return next((s for s in sizes if s >= n), None)


def is_decode_step(seqs: Sequence[ScheduledSeq]) -> bool:
    """Every sequence computes one token and samples it: the only step shape a decode graph replays."""
    return bool(seqs) and all(len(s.token_ids) == 1 and s.num_logits == 1 for s in seqs)


def graphs_unavailable(enabled: bool, device: torch.device, backend: object) -> str | None:
    """Why the runner cannot use decode graphs (None: it can)."""
    if not enabled:
        return "turned off (cuda_graphs=false)"
    if device.type != "cuda":
        return f"device is {device.type}, not cuda"
    if not hasattr(backend, "decode_metadata"):
        return f"attention backend {getattr(backend, 'name', backend)!r} has no static decode metadata"
    return None


@dataclass(frozen=True)
class DecodeRows:
    """One decode step padded to a captured size, on the host. Rows past `num_real` are padding."""
    num_real: int
    token_ids: list[int]
    positions: list[int]
    slots: list[int]  # cache slot each row's K/V is written to
    context_lens: list[int]  # positions each row attends to, its own included
    block_tables: list[list[int]]  # each row's blocks up to its context only (padding: [scratch])

    @property
    def size(self) -> int:
        return len(self.token_ids)


def pad_decode(seqs: Sequence[ScheduledSeq], size: int, block_size: int, scratch_block: int) -> DecodeRows:
    """The rows of an all-decode step, padded to `size` with rows confined to the scratch block."""
    if len(seqs) > size:
        raise ValueError(f"{len(seqs)} sequences do not fit a graph of {size} rows")
    tokens, positions, slots, lens, tables = [], [], [], [], []
    for s in seqs:
        pos = s.start_pos
        blocks = pos // block_size + 1
        if len(s.block_table) < blocks:
            raise ValueError(f"block table of {len(s.block_table)} blocks cannot hold {pos + 1} positions "
                             f"(block_size {block_size})")
        tokens.append(s.token_ids[0])
        positions.append(pos)
        slots.append(s.block_table[pos // block_size] * block_size + pos % block_size)
        lens.append(pos + 1)
        tables.append(list(s.block_table[:blocks]))
    pad = size - len(seqs)
    return DecodeRows(len(seqs), tokens + [0] * pad, positions + [0] * pad,
                      slots + [scratch_block * block_size] * pad, lens + [1] * pad,
                      tables + [[scratch_block] for _ in range(pad)])


class DecodeBuffers:
    """The device tensors a captured decode forward reads, allocated once for the largest size.

    Graph g of size b reads views [:b] of each; `load` overwrites them in place before a replay.
    Block-table columns past a row's context keep stale ids from earlier steps: the kernel reads a
    row's table only up to its context length, so they are never read.
    """

    def __init__(self, max_size: int, max_blocks: int, device: torch.device) -> None:
        i32 = {"dtype": torch.int32, "device": device}
        self.device = device
        self.ids_pos_slots = torch.zeros(3, max_size, dtype=torch.int64, device=device)  # rows: ids, positions, slots
        self.context_lens = torch.ones(max_size, **i32)
        self.block_table = torch.zeros(max_size, max_blocks, **i32)
        self.query_start = torch.arange(max_size, **i32)  # one query per sequence, in order
        self.query_lens = torch.ones(max_size, **i32)

    def load(self, rows: DecodeRows) -> None:
        """Copy one padded step into the buffers: three host-to-device copies on the current stream,
        ahead of the replay. non_blocking is safe from pageable memory: the driver stages the source
        before it returns, so the temporary host tensors may go at once."""
        n, width = rows.size, max(len(t) for t in rows.block_tables)
        if width > self.block_table.shape[1]:
            raise ValueError(f"a context of {width} blocks exceeds the graphs' {self.block_table.shape[1]}")
        host = torch.tensor([rows.token_ids, rows.positions, rows.slots], dtype=torch.int64)
        self.ids_pos_slots[:, :n].copy_(host, non_blocking=True)
        self.context_lens[:n].copy_(torch.tensor(rows.context_lens, dtype=torch.int32), non_blocking=True)
        table = torch.tensor([t + [0] * (width - len(t)) for t in rows.block_tables], dtype=torch.int32)
        self.block_table[:n, :width].copy_(table, non_blocking=True)

    def inputs(self, size: int, block_size: int, backend: Any) -> tuple[torch.Tensor, torch.Tensor, ForwardContext]:
        """(input_ids [size], positions [size], context) as views of the buffers, for capture."""
        ids, positions, slots = (row[:size] for row in self.ids_pos_slots)
        meta = backend.decode_metadata(slots, self.block_table[:size], self.context_lens[:size],
                                       self.query_start[:size], self.query_lens[:size])
        # The lists describe no real step: with attn_metadata given, the model never reads them.
        ctx = ForwardContext(positions=positions, slot_mapping=slots, query_lens=[1] * size, start_pos=[0] * size,
                             block_tables=[[] for _ in range(size)], block_size=block_size, device=self.device,
                             attn_metadata=meta)
        return ids, positions, ctx


def cuda_capture(device: torch.device) -> Capture:
    """Capture with torch.cuda.graph, all graphs sharing one memory pool (they never run concurrently,
    and each keeps its output alive, so no graph writes into another's output)."""
    pool: Any = None  # made at the first capture, so that any CUDA error surfaces inside capture_all

    def capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], Any], torch.Tensor]:
        nonlocal pool
        # torch.cuda.graph captures on a stream of the current device: make it the runner's (cuda:1).
        with torch.cuda.device(device):
            pool = torch.cuda.graph_pool_handle() if pool is None else pool
            # Warm up first, on a side stream (torch's recipe): Triton's JIT compile, cuBLAS handles and
            # workspaces initialise here, outside the capture, where a sync or an allocation is allowed.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another engine's thread in this process may use CUDA while this one captures.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                out = fn()
        return graph.replay, out

    return capture


def rerun_capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], Any], torch.Tensor]:
    """A stand-in for CUDA graphs (CPU tests, debugging): replay reruns the forward eagerly into the
    captured output tensor, reading the static buffers as a graph would."""
    out = fn()
    return (lambda: out.copy_(fn())), out


class DecodeGraphs:
    """Captured decode forwards of one model, one per size; `run` replays the one a step fits."""

    def __init__(self, model: Any, block_size: int, scratch_block: int, max_blocks: int, sizes: Sequence[int],
                 device: torch.device, capture: Capture | None = None) -> None:
        if not sizes:
            raise ValueError("DecodeGraphs needs at least one size")
        self.model, self.block_size, self.scratch_block = model, block_size, scratch_block
        self.sizes = tuple(sorted(set(sizes)))
        self.buffers = DecodeBuffers(self.sizes[-1], max_blocks, device)
        self._capture = capture or cuda_capture(device)
        self._graphs: dict[int, tuple[Callable[[], Any], torch.Tensor]] = {}
        self.num_replays = 0  # decode steps served by a graph (tests and benchmarks check they happen)

    @property
    def captured(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def capture_all(self) -> None:
        """Capture every size, largest first (the smaller graphs then fit in the pool it grew), with
        all-padding inputs: capturing writes only the scratch slot. Call under torch.inference_mode().
        If a capture fails (an op that syncs or allocates off the pool), no graph is kept: eager."""
        start = time.perf_counter()
        for size in reversed(self.sizes):
            self.buffers.load(pad_decode([], size, self.block_size, self.scratch_block))
            ids, positions, ctx = self.buffers.inputs(size, self.block_size, self.model.backend)
            try:
                self._graphs[size] = self._capture(lambda i=ids, p=positions, c=ctx: self.model(i, p, c))
            except Exception as e:  # any capture error means: serve eagerly, and say so
                log.warning("CUDA graph capture failed at batch %d (%s: %s); decode runs eagerly",
                            size, type(e).__name__, e)
                self._graphs.clear()
                return
        log.info("CUDA graphs: captured decode at %d batch sizes up to %d in %.2f s", len(self.sizes),
                 self.sizes[-1], time.perf_counter() - start)

    def prepare(self, seqs: Sequence[ScheduledSeq]) -> Callable[[], torch.Tensor] | None:
        """Load an all-decode step into the buffers and return its forward: a call replays the graph and
        returns the real rows' hidden states [len(seqs), H] (a view, valid until the next replay).
        None when the step does not fit a captured graph: the caller runs it eagerly."""
        size = pick_size(len(seqs), self.captured) if is_decode_step(seqs) else None
        if size is None:
            return None
        self.buffers.load(pad_decode(seqs, size, self.block_size, self.scratch_block))
        replay, out = self._graphs[size]
        n = len(seqs)

        def forward() -> torch.Tensor:
            self.num_replays += 1
            replay()
            return out[:n]

        return forward

    def run(self, seqs: Sequence[ScheduledSeq]) -> torch.Tensor | None:
        """`prepare` and call: the step's hidden states [len(seqs), H], or None (not a graph step)."""
        forward = self.prepare(seqs)
        return None if forward is None else forward()
