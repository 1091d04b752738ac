HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.structured --threads 2 --reps 3 --batches 1 32 --max-tokens 128 --out 2026-11-30-structured-lazy
