#!/usr/bin/env bash
# spec_decode.json here: native engine in process, SmolLM2-135M-Instruct, target f32 unquantized, self-draft
# w8a8, 1 thread, adaptive k with pause (the default since 6048481); machine shared (load ~2.5-3).
set -euo pipefail
export HF_HUB_OFFLINE=1
python -m benchmarks.spec_decode --threads 1 --reps 2 --max-tokens 48 --adaptive --batches 1 4 8 16 \
    --out 2026-11-22-spec-decode-busy-adaptive
