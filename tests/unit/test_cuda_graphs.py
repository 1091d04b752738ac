"""Decode CUDA graphs, the parts that need no GPU: which sizes are captured, which steps replay one, how
a step is padded into the static buffers, and that replay returns the real rows only.

Graphs are stood in for by `rerun_capture` (replay reruns the captured function over the buffers), with
a fake model whose output shows exactly what it read from them. The real model through the padded
path (Triton kernel under the interpreter) is in tests/kernels/test_cuda_graph_padding.py; real CUDA
graphs in test_cuda_graphs_gpu.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from serve.engine.batch import ScheduledSeq
from serve.engine.config import EngineConfig
from serve.sampling_params import SamplingParams
from serve.worker.cuda_graphs import (
    DecodeBuffers,
    DecodeGraphs,
    capture_sizes,
    cuda_capture,
    graphs_unavailable,
    is_decode_step,
    pad_decode,
    pick_size,
    rerun_capture,
)
from serve.worker.model_runner import RunnerConfig

BS, SCRATCH, MAX_BLOCKS = 4, 99, 8
CUDA = torch.device("cuda")  # a device object only: nothing here allocates on it


def seq(start_pos: int, table: list[int], tokens: list[int] | None = None, num_logits: int = 1) -> ScheduledSeq:
    tokens = tokens or [7 + start_pos]
    return ScheduledSeq(f"r{start_pos}", tokens, start_pos, table, num_logits, SamplingParams(), [1, 2], [])


def test_capture_sizes_follow_the_ladder() -> None:
    sizes = capture_sizes(256)
    assert sizes[:6] == (1, 2, 4, 8, 16, 24) and sizes[-2:] == (248, 256) and len(sizes) == 35
    assert capture_sizes(1) == (1,) and capture_sizes(3) == (1, 2, 3) and capture_sizes(8) == (1, 2, 4, 8)
    assert capture_sizes(20) == (1, 2, 4, 8, 16, 20) and capture_sizes(0) == ()


def test_pick_size_is_the_smallest_that_holds_the_batch() -> None:
    sizes = capture_sizes(32)
    assert [pick_size(n, sizes) for n in (1, 2, 3, 5, 8, 9, 17, 32)] == [1, 2, 4, 8, 8, 16, 24, 32]
    assert pick_size(33, sizes) is None and pick_size(1, ()) is None


def test_only_all_decode_steps_replay() -> None:
    decode = [seq(5, [3, 4]), seq(0, [6])]  # a one-token prompt is decode-shaped too
    assert is_decode_step(decode)
    assert not is_decode_step([])
    assert not is_decode_step([seq(0, [3, 4], tokens=[1, 2, 3])])  # prefill
    assert not is_decode_step([*decode, seq(0, [3, 4], tokens=[1, 2, 3])])  # mixed
    assert not is_decode_step([seq(5, [3, 4], tokens=[1, 2, 3], num_logits=3)])  # verifying drafts
    assert not is_decode_step([seq(5, [3, 4], num_logits=0)])  # a one-token chunk mid-prompt


def test_graphs_are_unavailable_off_cuda_when_turned_off_or_without_static_metadata() -> None:
    class Static:
        name = "triton"

        def decode_metadata(self, *args: Any) -> None: ...

    class Dynamic:
        name = "torch_sdpa"

    assert graphs_unavailable(True, CUDA, Static()) is None
    assert "turned off" in graphs_unavailable(False, CUDA, Static())
    assert "cpu" in graphs_unavailable(True, torch.device("cpu"), Static())
    assert "torch_sdpa" in graphs_unavailable(True, CUDA, Dynamic())


def test_padding_rows_stay_in_the_scratch_block() -> None:
    rows = pad_decode([seq(5, [3, 4, 9]), seq(0, [6])], 4, BS, SCRATCH)
    assert rows.num_real == 2 and rows.size == 4
    assert rows.token_ids == [12, 7, 0, 0] and rows.positions == [5, 0, 0, 0]
    assert rows.slots == [4 * BS + 1, 6 * BS, SCRATCH * BS, SCRATCH * BS]
    assert rows.context_lens == [6, 1, 1, 1]
    assert rows.block_tables == [[3, 4], [6], [SCRATCH], [SCRATCH]]  # only the blocks the context uses


def test_padding_rejects_short_tables_and_oversized_steps() -> None:
    with pytest.raises(ValueError, match="cannot hold 9 positions"):
        pad_decode([seq(8, [3, 4])], 1, BS, SCRATCH)
    with pytest.raises(ValueError, match="do not fit"):
        pad_decode([seq(1, [3]), seq(2, [4])], 1, BS, SCRATCH)


def test_buffers_are_written_in_place_and_views_keep_their_storage() -> None:
    buf = DecodeBuffers(8, MAX_BLOCKS, torch.device("cpu"))
    before = [t.data_ptr() for t in (buf.ids_pos_slots, buf.context_lens, buf.block_table)]
    buf.load(pad_decode([seq(9, [3, 4, 5]), seq(2, [6])], 4, BS, SCRATCH))
    assert [t.data_ptr() for t in (buf.ids_pos_slots, buf.context_lens, buf.block_table)] == before
    assert buf.ids_pos_slots[:, :4].tolist() == [[16, 9, 0, 0], [9, 2, 0, 0], [5 * BS + 1, 6 * BS + 2] + [SCRATCH * BS] * 2]
    assert buf.context_lens[:4].tolist() == [10, 3, 1, 1]
    assert buf.block_table[:4, :3].tolist() == [[3, 4, 5], [6, 0, 0], [SCRATCH, 0, 0], [SCRATCH, 0, 0]]
    with pytest.raises(ValueError, match="exceeds"):
        buf.load(pad_decode([seq(40, list(range(11)))], 1, BS, SCRATCH))


class FakeBackend:
    name = "fake"

    def decode_metadata(self, slots: torch.Tensor, table: torch.Tensor, lens: torch.Tensor, qstart: torch.Tensor,
                        qlens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return slots, table, lens, qstart, qlens


class FakeModel:
    """'Hidden states' [B, 5]: what each row read from the buffers (id, position, slot, context, block 0)."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.calls: list[int] = []

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        slots, table, lens, _, qlens = ctx.attn_metadata
        assert ctx.slot_mapping is slots and qlens.tolist() == [1] * ids.numel()
        self.calls.append(ids.numel())
        return torch.stack([ids, positions, slots, lens.long(), table[:, 0].long()], dim=1).float()


def graphs(max_batch: int = 8, capture: Any = rerun_capture) -> DecodeGraphs:
    g = DecodeGraphs(FakeModel(), BS, SCRATCH, MAX_BLOCKS, capture_sizes(max_batch), torch.device("cpu"), capture)
    g.capture_all()
    return g


def test_capture_runs_largest_first_on_padding_only() -> None:
    g = graphs()
    assert g.captured == (1, 2, 4, 8) and g.model.calls == [8, 4, 2, 1]


def test_replay_reads_the_step_from_the_buffers_and_returns_the_real_rows() -> None:
    g = graphs()
    steps = [[seq(5, [3, 4]), seq(0, [6]), seq(9, [1, 2, 7])], [seq(6, [3, 4])]]
    for step in steps:
        hidden = g.run(step)
        rows = pad_decode(step, pick_size(len(step), g.captured), BS, SCRATCH)
        want = [[rows.token_ids[i], rows.positions[i], rows.slots[i], rows.context_lens[i], rows.block_tables[i][0]]
                for i in range(len(step))]
        assert hidden.shape == (len(step), 5) and hidden.tolist() == want
    assert g.num_replays == 2


def test_steps_that_do_not_fit_run_eagerly() -> None:
    g = graphs(max_batch=4)
    assert g.prepare([seq(0, [3, 4], tokens=[1, 2, 3])]) is None  # prefill
    assert g.prepare([seq(i, [i]) for i in range(5)]) is None  # larger than every graph
    assert g.num_replays == 0


def test_a_failed_capture_leaves_no_graph() -> None:
    def broken(fn: Any) -> Any:
        raise RuntimeError("operation not permitted when stream is capturing")

    g = graphs(capture=broken)
    assert g.captured == () and g.run([seq(5, [3, 4])]) is None


def test_cuda_graph_options_reach_the_runner_config() -> None:
    cfg = EngineConfig.from_options("m.gguf", {"cuda_graphs": "false", "max_num_seqs": "16"})
    kw = cfg.runner_kwargs()
    assert kw["cuda_graphs"] is False and kw["max_graph_batch"] == 16  # never above max_num_seqs
    assert EngineConfig("m.gguf").runner_kwargs()["cuda_graphs"] is True
    assert RunnerConfig(**EngineConfig.from_options("m", {"max_graph_batch": "8"}).runner_kwargs()).max_graph_batch == 8
    with pytest.raises(ValueError, match="max_graph_batch"):
        EngineConfig.from_options("m.gguf", {"max_graph_batch": "0"})
    with pytest.raises(ValueError, match="max_graph_batch"):
        RunnerConfig("m.gguf", max_graph_batch=0)


def test_cuda_capture_warms_up_on_a_side_stream_then_captures_into_the_shared_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch.cuda calls, faked (no GPU here), each checked against the real function's signature."""
    events: list[str] = []

    class Ctx:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> None:
            events.append(f"enter {self.name}")

        def __exit__(self, *exc: object) -> None:
            events.append(f"exit {self.name}")

    class Stream:
        def wait_stream(self, other: object) -> None:
            events.append("wait")

    class Graph:
        def replay(self) -> None:
            events.append("replay")

    def graph(g: Graph, pool: object = None, stream: object = None, capture_error_mode: str = "global") -> Ctx:
        assert isinstance(g, Graph) and pool == "pool" and capture_error_mode == "thread_local"
        return Ctx("capture")

    fakes: dict[str, Callable[..., Any]] = {
        "device": lambda d: Ctx("device"), "graph_pool_handle": lambda: "pool", "Stream": lambda *a, **k: Stream(),
        "current_stream": lambda *a, **k: Stream(), "stream": lambda s: Ctx("side stream"),
        "CUDAGraph": lambda *a, **k: Graph(), "graph": graph}
    for name, fake in fakes.items():
        sig = inspect.signature(getattr(torch.cuda, name))

        def checked(*a: Any, _sig: inspect.Signature = sig, _fake: Callable[..., Any] = fake, **k: Any) -> Any:
            _sig.bind(*a, **k)  # raises TypeError if the real function would not accept the call
            return _fake(*a, **k)

        monkeypatch.setattr(torch.cuda, name, checked)
    replay, out = cuda_capture(CUDA)(lambda: events.append("forward") or torch.ones(2))
    replay()
    assert events == ["enter device", "wait", "enter side stream", "forward",
                      "exit side stream", "wait", "enter capture", "forward", "exit capture", "exit device",
                      "replay"]
    assert torch.equal(out, torch.ones(2))
