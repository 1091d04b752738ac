#!/usr/bin/env bash
# How the files in this directory were made (native engine, session 2). Run from the repo root on an
# otherwise idle machine (2 cores): every stack and variant below ran one after another, nothing else.
set -euo pipefail
export HF_HUB_OFFLINE=1
R=benchmarks/results/2026-11-22-native
G=$HOME/.cache/sluice/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
PY=.venv/bin/python
sluice() { $PY -m serve.cli "$@"; }

# 1. Throughput and latency against vLLM (CPU build) and llama.cpp, one run: random 128 in / 128 out,
#    ignore_eos, concurrency 1, 8, 32; startup time and peak RSS per server.
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

# 3. Weight variants of the native data plane (ModelRunner alone), batch 1 and 32.
$PY -m benchmarks.native_variants --threads 2 --steps 64 --batch 1 32 \
  --variant f32=$G:none@float32 --variant int8_bf16act=$G:int8_bf16act@float32 \
  --variant w8a8=$G:w8a8@float32 --variant gguf_int4_bf16=$G:gguf@bfloat16 \
  --variant bf16=$G:none@bfloat16 \
  --variant gptq_int4_g128_bf16=/tmp/qout2/gptq-int4-g128:gptq@bfloat16 \
  --variant rtn_int4_g128_bf16=/tmp/qout2/rtn-int4-g128:gptq@bfloat16 \
  --out $R/native-variants.json
# (/tmp/qout2/*: made by ../2026-11-22-quality-2/commands.sh: `sluice quantize --method gptq|rtn ...`)

# 4. Speculative decoding (native engine, in process, greedy): the default serving config (target =
#    the bundled GGUF under quantization=auto -> int8_bf16act here), ngram on an input-grounded task,
#    the quantized self-draft (w8a8) on open-ended chat, then batch sweeps.
$PY -m benchmarks.spec_decode --threads 2 --reps 2 --max-tokens 96 --adaptive --target-quant int8_bf16act \
  --draft-quant w8a8 --batches 1 4 8 16 --out 2026-11-22-native/spec

# 5. (after steps 1-4 and a CI run, same session, idle machine) the native server with
#    -o quantization=w8a8 at concurrency 32, same workload as step 1's c=32 level.
port=18777
OMP_NUM_THREADS=2 sluice serve --backend native --port $port --log-level warning -o quantization=w8a8 \
  > $R/w8a8-server.log 2>&1 &
until curl -sf localhost:$port/health > /dev/null; do sleep 0.5; done
sluice bench serve --base-url http://127.0.0.1:$port --model smollm2-135m-instruct --tokenizer $G \
  --dataset random --input-len 128 --output-len 128 --ignore-eos --num-requests 128 --warmup 4 \
  --load concurrency --concurrency 32 --time-limit 180 --label sluice-native-w8a8-c32 \
  --out $R/native-w8a8-c32.json --quiet
kill %1
