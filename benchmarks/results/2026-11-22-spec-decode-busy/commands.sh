#!/usr/bin/env bash
# How the JSON files in this directory were made (SmolLM2-135M-Instruct bundled GGUF, native engine in
# process, target unquantized float32 ("quantization=none"), self-draft w8a8, 1 compute thread; the
# 2-core machine was shared with other jobs, load average ~3: single-stream plain tok/s drifted 11-19).
set -euo pipefail
export HF_HUB_OFFLINE=1
# spec_decode_reps2.json: first run (k=4 ngram, k=3 draft, adaptive off, sweep 1-8 on the repeat task)
python -m benchmarks.spec_decode --threads 1 --reps 2 --max-tokens 48 --out 2026-11-22-spec-decode-busy
# spec_decode.json: same, one rep, sweeps on both tasks up to batch 16
python -m benchmarks.spec_decode --threads 1 --reps 1 --max-tokens 48 --out 2026-11-22-spec-decode-busy
# ../2026-11-22-spec-decode-busy-adaptive/spec_decode.json: adaptive k with pause (the new default)
python -m benchmarks.spec_decode --threads 1 --reps 2 --max-tokens 48 --adaptive --batches 1 4 8 16 \
    --out 2026-11-22-spec-decode-busy-adaptive
