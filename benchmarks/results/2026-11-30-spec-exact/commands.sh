#!/usr/bin/env bash
# Speculative decoding on the default target after verify rows moved to the decode kernel (exact
# greedy speculation): the same command as 2026-11-22-cpu-kernels step 5, on the AVX-512 EPYC.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=.venv/bin/python
HF_HUB_OFFLINE=1 $PY -m benchmarks.spec_decode --threads 2 --reps 2 --max-tokens 96 --adaptive --target-quant gguf \
  --draft-quant gguf --batches 1 4 8 16 --out 2026-11-30-spec-exact/spec
