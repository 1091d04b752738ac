#!/usr/bin/env bash
# Structured outputs in the native engine: every request JSON-schema constrained vs none, batch 1 and 32.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.structured --threads 2 --reps 3 --batches 1 32 --max-tokens 128 \
  --out 2026-11-30-structured
