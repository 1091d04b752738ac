"""Which reader a checkpoint is written for (`sluice quantize --format`), and what that implies.

Both formats write the same tensors (serve/quantize/packing.py); they differ in the choices that
decide who can load them:

  gptq    (default) for AutoGPTQ-layout readers: vLLM, GPTQModel, transformers + optimum, and our
          native engine. Symmetric grid by default and whole groups only: vLLM 0.32 builds
          `in_features // group_size` scale rows per linear and rejects asymmetric GPTQ
          (`Unsupported quantization config: bits=4, sym=False`).
  sluice  what `sluice quantize` wrote before issue #13 (asymmetric, group 128, a ragged last group
          where 128 does not divide in_features): only Sluice's native engine reads it. Kept so the
          runs under benchmarks/results/2026-11-22-* can be reproduced.

The group size: for `gptq`, an explicit `--group-size` must divide every quantized input dimension or
the run is refused (naming the layer and the sizes that fit): results are labelled by the size asked
for ("g128"), so changing it behind the user's back would mislabel them. Left unset, the largest of
128, 64, 32 that divides every layer is taken, and the note saying so goes to the log and into
quantize_config.json (SmolLM2-135M: hidden 576 = 4.5 x 128, so 64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

GPTQ = "gptq"
SLUICE = "sluice"
FORMATS = (GPTQ, SLUICE)
DEFAULT_FORMAT = GPTQ
DEFAULT_GROUP = 128
# The group sizes vLLM's GPTQ path accepts besides -1 (its Marlin list, checked on CPU too), which are
# also groups torch's int4 kernel and our block kernels tile: the only ones worth choosing by default.
VLLM_GROUPS = (128, 64, 32)


@dataclass(frozen=True)
class GroupChoice:
    group_size: int  # -1: one group per row
    requested: int | None  # what --group-size said; None: left to the format's default
    note: str | None = None  # why group_size differs from the default, for the log and quantize_config


def default_sym(fmt: str) -> bool:
    """Symmetric unless the format is `sluice` (whose old default was asymmetric)."""
    _check_format(fmt)
    return fmt == GPTQ


def choose_group_size(in_features: Mapping[str, int], requested: int | None, fmt: str = GPTQ) -> GroupChoice:
    """The group size to quantize with. in_features: {module name: its input dimension} of every linear
    that will be quantized. Raises ValueError (message names a layer and the sizes that fit) when an
    explicit size leaves a ragged group under format `gptq`."""
    _check_format(fmt)
    if fmt == SLUICE:  # ragged last groups are fine for our own loader
        return GroupChoice(DEFAULT_GROUP if requested is None else requested, requested)
    if requested is not None:
        _refuse_ragged(in_features, requested)
        return GroupChoice(requested, requested)
    for g in VLLM_GROUPS:
        if not _ragged(in_features, g):
            return GroupChoice(g, None, None if g == DEFAULT_GROUP else _fallback_note(in_features, g))
    return GroupChoice(-1, None, _fallback_note(in_features, -1))


def vllm_caveats(bits: int, group_size: int, sym: bool, act_order: bool) -> list[str]:
    """Why vLLM 0.32 would refuse a `gptq` checkpoint with these settings (empty: it loads it)."""
    out = []
    if not sym:
        out.append("asymmetric grids: vLLM reads GPTQ as symmetric only (its error: 'Unsupported quantization "
                   f"config: bits={bits}, sym=False')")
    if act_order and group_size != -1:
        out.append("act-order with groups: vLLM 0.32 rejects desc_act=True unless group_size is -1")
    if group_size not in (-1, *VLLM_GROUPS):
        out.append(f"group size {group_size}: vLLM takes only -1, {', '.join(map(str, VLLM_GROUPS))}")
    if bits == 8:
        out.append("8 bits: vLLM's CPU build has no 8-bit GPTQ kernel (its GPU build has)")
    return out


def fitting_sizes(in_features: Mapping[str, int]) -> list[int]:
    """Every legal group size (a multiple of 8) that divides all input dimensions, largest first."""
    common = math.gcd(*in_features.values()) if in_features else 0
    return [g for g in range(common, 7, -1) if common % g == 0 and g % 8 == 0]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _ragged(in_features: Mapping[str, int], group: int) -> dict[str, int]:
    """The modules whose input dimension `group` does not divide."""
    return {} if group == -1 else {n: k for n, k in in_features.items() if k % group}


def _refuse_ragged(in_features: Mapping[str, int], group: int) -> None:
    bad = _ragged(in_features, group)
    if not bad:
        return
    name, k = next(iter(bad.items()))
    others = f" (and {len(bad) - 1} more linears)" if len(bad) > 1 else ""
    fits = fitting_sizes(in_features)
    in_vllm = [g for g in fits if g in VLLM_GROUPS]
    raise ValueError(
        f"--group-size {group} does not divide the input dimension of {name} (in_features {k}){others}: the last "
        f"group would be ragged, which vLLM and other GPTQ readers cannot load. Sizes that divide every quantized "
        f"layer: {', '.join(map(str, in_vllm or ['none']))} among those vLLM takes, -1 (one group per row); "
        f"any of {fits} for other readers. Or leave --group-size unset to pick the largest that fits, or "
        f"--format {SLUICE} to write ragged groups only Sluice reads.")


def _fallback_note(in_features: Mapping[str, int], chosen: int) -> str:
    name, k = next(iter(_ragged(in_features, DEFAULT_GROUP).items()))
    size = "-1 (one group per row)" if chosen == -1 else str(chosen)
    return (f"group size {size} instead of the default {DEFAULT_GROUP}: {DEFAULT_GROUP} does not divide "
            f"{name}'s in_features {k}; {size} is the largest of {', '.join(map(str, VLLM_GROUPS))} that "
            f"divides every quantized layer")
