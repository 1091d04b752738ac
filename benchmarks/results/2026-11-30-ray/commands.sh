#!/usr/bin/env bash
# Ray Serve: prefix-affinity vs round-robin over two engine replicas on the `prefix` workload, and the
# Ray path vs the single-process server at c=1 (one replica, same backend and threads).
set -uo pipefail
cd "$(dirname "$0")/../../.."
D=benchmarks/results/2026-11-30-ray
S=.venv/bin/sluice
export HF_HUB_OFFLINE=1
TOK="--tokenizer $(ls ~/.cache/sluice/models/smollm2-135m-instruct/*.gguf)"
wait_up() { for _ in $(seq 240); do curl -sf http://127.0.0.1:8301/health >/dev/null && return 0; sleep 1; done; return 1; }
PREFIX="--dataset prefix --prefix-len 1024 --num-prefixes 4 --input-len 32 --output-len 16 --num-requests 48 \
  --load concurrency --concurrency 1 --warmup 0 --seed 7"
for pol in prefix-affinity round-robin; do
  $S serve --config $D/ray-$pol.toml > /tmp/ray-$pol.log 2>&1 & pid=$!
  wait_up && $S bench serve --base-url http://127.0.0.1:8301 --model smol $TOK $PREFIX --label ray-$pol --out $D/prefix-$pol.json
  kill -INT $pid; wait $pid
done
RANDOM_C1="--dataset random --input-len 128 --output-len 128 --ignore-eos --num-requests 24 --load concurrency \
  --concurrency 1 --warmup 2 --seed 7"
$S serve --config $D/ray-one.toml > /tmp/ray-one.log 2>&1 & pid=$!
wait_up && $S bench serve --base-url http://127.0.0.1:8301 --model smol $TOK $RANDOM_C1 --label ray-one --out $D/c1-ray.json
kill -INT $pid; wait $pid
$S serve --backend llamacpp --port 8301 --served-model-name smol -o n_parallel=2 -o n_ctx_per_seq=2048 \
  -o n_threads=2 > /tmp/single.log 2>&1 & pid=$!
wait_up && $S bench serve --base-url http://127.0.0.1:8301 --model smol $TOK $RANDOM_C1 --label single-process --out $D/c1-single.json
kill -INT $pid; wait $pid
