"""One quantization job: load the HF model, calibrate, quantize layer by layer, write the checkpoint."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from serve.quantize.calibration import DEFAULT_CALIB, calibration_set
from serve.quantize.checkpoint import CheckpointMeta, write_checkpoint
from serve.quantize.formats import DEFAULT_FORMAT, GPTQ, choose_group_size, default_sym, vllm_caveats
from serve.quantize.gptq import GPTQOptions
from serve.quantize.grid import QuantSpec
from serve.quantize.sequential import SEQUENTIAL_GROUPS, Progress, quantize_decoder, quantized_in_features


@dataclass(frozen=True)
class QuantizeJob:
    model_dir: Path
    out_dir: Path
    method: str = "gptq"
    bits: int = 4
    group_size: int | None = None  # None: the format's default (see formats.choose_group_size)
    sym: bool | None = None  # None: the format's default (symmetric for gptq)
    act_order: bool = False
    calib: str = DEFAULT_CALIB
    nsamples: int = 128
    seqlen: int = 512
    damp: float = 0.01
    block_size: int = 128
    dtype: str = "float16"
    seed: int = 0
    threads: int | None = None
    true_sequential: bool = True
    fmt: str = DEFAULT_FORMAT


@dataclass(frozen=True)
class QuantizeResult:
    out_dir: Path
    meta: CheckpointMeta  # the settings really used (group size and grid resolved)


@contextmanager
def _layer_progress(num_layers: int) -> Iterator[Progress]:
    """A rich bar over decoder layers; the description names the linear group being quantized."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True))
    with bar:
        task = bar.add_task("quantize", total=num_layers)

        def update(layer: int, stage: str) -> None:
            bar.update(task, completed=layer, description=f"layer {layer}: {stage}")
            if not bar.console.is_terminal:  # a log file gets one plain line per stage instead of a live bar
                print(f"layer {layer}/{num_layers}: {stage}", file=sys.stderr, flush=True)

        yield update
        bar.update(task, completed=num_layers, description="done")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_spec(job: QuantizeJob, in_features: dict[str, int]) -> tuple[QuantSpec, str | None]:
    """The grid to quantize with, from the job and the model's quantized input dimensions; logs the
    group-size note and, for format gptq, each reason vLLM would refuse the result."""
    choice = choose_group_size(in_features, job.group_size, job.fmt)
    sym = default_sym(job.fmt) if job.sym is None else job.sym
    spec = QuantSpec(bits=job.bits, group_size=choice.group_size, sym=sym)
    if choice.note:
        _say(f"note: {choice.note}")
    if job.fmt == GPTQ:
        for caveat in vllm_caveats(spec.bits, spec.group_size, spec.sym, job.act_order):
            _say(f"warning: vLLM will not load this checkpoint: {caveat}")
    return spec, choice.note


def run_job(job: QuantizeJob) -> QuantizeResult:
    opts = GPTQOptions(damp_percent=job.damp, block_size=job.block_size, act_order=job.act_order)
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(job.model_dir), dtype=torch.float32)
    if getattr(model.config, "model_type", "") != "llama":
        raise ValueError(f"only Llama-architecture models are supported, got {model.config.model_type!r}")
    spec, note = resolve_spec(job, quantized_in_features(model))
    windows = None
    if job.method == "gptq":
        tok = AutoTokenizer.from_pretrained(str(job.model_dir))
        windows = calibration_set(tok, job.calib, job.nsamples, job.seqlen, job.seed)
    with torch.no_grad(), _layer_progress(len(model.model.layers)) as progress:
        quantized = quantize_decoder(model.eval(), windows, spec, job.method, opts, progress,
                                     true_sequential=job.true_sequential)
    expected = len(model.model.layers) * sum(len(g) for g in SEQUENTIAL_GROUPS)
    if len(quantized) != expected:
        raise ValueError(f"quantized {len(quantized)} linears, expected {expected}")
    meta = CheckpointMeta(spec=spec, method=job.method, act_order=job.act_order, damp_percent=job.damp,
                          dtype=job.dtype, true_sequential=job.true_sequential, fmt=job.fmt, group_note=note)
    return QuantizeResult(write_checkpoint(job.model_dir, job.out_dir, quantized, meta), meta)
