"""Single-stream decode speed of native-engine model variants, measured side by side in one process.

    python -m benchmarks.quant_decode --variant bf16=HF_DIR --variant int4=GPTQ_DIR --variant int8=HF_DIR:int8 \
        [--steps 64 --rounds 5 --threads 2 --out results.json]

Every variant is loaded once; then `rounds` rounds each time every variant (in rotated order) decodes
`steps` greedy tokens after the same 32-token prompt. The per-variant median and best round are reported,
and ratios (of medians) against the first variant: on a shared, noisy machine interleaving is what keeps the
comparison fair. The loop is the model alone (forward of one token through the paged KV cache,
logits, argmax): no scheduler or HTTP, so it isolates what the weight format changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def parse_variant(text: str) -> tuple[str, str, str]:
    """"label=PATH[:quant]" -> (label, path, quant)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"--variant must look like label=PATH[:quant], got {text!r}")
    path, _, quant = rest.partition(":")
    return label, path, quant or "auto"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_decode")
    p.add_argument("--variant", action="append", required=True, help="label=PATH[:quant], first is the baseline")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import torch

    from benchmarks.quality_models import NativeLM, checkpoint_bytes

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        variants = [parse_variant(v) for v in a.variant]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models = {label: NativeLM(path, dtype=a.dtype, quant=quant, max_len=512) for label, path, quant in variants}
    prompt = list(range(1000, 1032))
    speeds: dict[str, list[float]] = {label: [] for label in models}
    labels = list(models)
    for r in range(a.rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            speeds[label].append(models[label].decode_tokens_per_s(prompt, a.steps))
    base = statistics.median(speeds[labels[0]])
    rows = [{"label": label, "model": path, "quant": quant, "dtype": a.dtype,
             "decode_tok_s_median": round(statistics.median(speeds[label]), 2),
             "decode_tok_s_best": round(max(speeds[label]), 2),
             "decode_tok_s_rounds": [round(s, 2) for s in speeds[label]],
             "ratio_vs_" + labels[0]: round(statistics.median(speeds[label]) / base, 3),
             "file_bytes": checkpoint_bytes(path), "weight_bytes_in_memory": models[label].weight_bytes()}
            for label, path, quant in variants]
    out = {"steps": a.steps, "rounds": a.rounds, "threads": torch.get_num_threads(), "variants": rows}
    print(json.dumps(out, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
