#!/usr/bin/env bash
# Ray Serve against its bars (issue #16), side by side on one machine, loopback only:
#  1. prefix-affinity (cache-aware, bounded load) vs round-robin over two llama.cpp engine replicas
#     (1 thread, 2 slots each) on the `prefix` workload (4, then 6 prefixes of 1024 tokens), its
#     prefixes in a seeded random order;
#  2. the Ray path (one replica, 2 threads, engine events coalesced) vs the single-process server at
#     c=1 on random 128/128 with ignore_eos, in ROUNDS (3) rounds that alternate which goes first: the
#     machine's speed drifts by 10-15% over minutes, more than the overhead being measured.
# Then benchmarks/ray_summary.py writes summary.json: the TTFT ratios and the overhead per round and
# its median.
# Run on an idle machine from anywhere:   bash benchmarks/ray_bench.sh [OUT_DIR]
# OUT_DIR (default benchmarks/results/<today>-ray2) receives the engine configs, commands.sh (the
# command line and commit that made it) and the result JSONs; the servers' logs go to /tmp/ray-bench-*.
# Each bench is given the server's pid, so its recorded machine load counts only work outside the server.
# Environment: SLUICE (the command, default .venv/bin/sluice), PORT (8301), N_PREFIX and N_C1 (request
# counts; small ones make a smoke run), ROUNDS, PARTS ("prefix c1": which parts to run).
set -uo pipefail
cd "$(dirname "$0")/.."
D=${1:-benchmarks/results/$(date +%F)-ray2}
S=${SLUICE:-.venv/bin/sluice}
PORT=${PORT:-8301}
URL=http://127.0.0.1:$PORT
export HF_HUB_OFFLINE=1
TOK="--tokenizer $(ls ~/.cache/sluice/models/smollm2-135m-instruct/*.gguf)"
mkdir -p "$D"
PARTS=${PARTS:-prefix c1}
ROUNDS=${ROUNDS:-3}
cat >> "$D/commands.sh" <<CMD
# Made at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) by:
SLUICE="$S" PORT=$PORT N_PREFIX=${N_PREFIX:-64} N_C1=${N_C1:-24} ROUNDS=$ROUNDS PARTS="$PARTS" bash benchmarks/ray_bench.sh $D
CMD

engine_toml() {  # NAME POLICY REPLICAS NUM_CPUS THREADS COMMENT
  cat > "$D/$1.toml" <<TOML
# $6
[server]
host = "127.0.0.1"
port = $PORT

[[models]]
name = "smol"
policy = "$2"

[[models.replicas]]
backend = "llamacpp"
model = "smollm2-135m-instruct"
options = { n_parallel = 2, n_ctx_per_seq = 2048 }

[cluster]
engine = "ray"
ingress_num_cpus = 0

[cluster.models.smol]
replicas = $3
num_cpus = $4
threads = $5
TOML
}
engine_toml ray-prefix-affinity prefix-affinity 2 0.5 1 "Two engine replicas on a local Ray, 1 thread and 2 slots each; policy prefix-affinity."
engine_toml ray-round-robin round-robin 2 0.5 1 "Two engine replicas on a local Ray, 1 thread and 2 slots each; policy round-robin."
engine_toml ray-one least-outstanding 1 1 2 "One engine replica on a local Ray, 2 threads: the Ray path's overhead at c=1."

wait_up() { for _ in $(seq 240); do curl -sf $URL/health >/dev/null && return 0; sleep 1; done; return 1; }
bench() {  # LABEL OUT ARGS...: against the server started last, then stop it
  local label=$1 out=$2; shift 2
  wait_up && $S bench serve --base-url $URL --model smol $TOK "$@" --label "$label" --out "$D/$out" --server-pid $pid
  kill -INT $pid; wait $pid
}

# 4 prefixes over 2 replicas x 2 slots: affinity keeps 2 on each (a miss per prefix, then hits);
# round-robin shows each replica all 4 in random order, and a replica's 2 slots hold the last 2 it
# saw, so round-robin hits half its requests on average: its TTFT p50 sits on the hit/miss boundary.
# Hence the second workload, 6 prefixes: affinity 3 per replica, round-robin 6. Expected hits out of
# 64 (seed 7, a replay of the slots' LRU): 4 prefixes 60 vs 31, 6 prefixes 37 vs 24.
for np in 4 6; do
  [[ " $PARTS " == *" prefix "* ]] || break
  PREFIX="--dataset prefix --prefix-len 1024 --num-prefixes $np --prefix-order random --input-len 32 --output-len 16
    --num-requests ${N_PREFIX:-64} --load concurrency --concurrency 1 --warmup 4 --seed 7"
  for pol in prefix-affinity round-robin; do
    $S serve --config "$D/ray-$pol.toml" > /tmp/ray-bench-$pol-$np.log 2>&1 & pid=$!
    bench "ray-$pol-$np" "prefix$np-$pol.json" $PREFIX
  done
done

C1="--dataset random --input-len 128 --output-len 128 --ignore-eos --num-requests ${N_C1:-24} --load concurrency
  --concurrency 1 --warmup 2 --seed 7"
c1_ray() {
  $S serve --config "$D/ray-one.toml" > /tmp/ray-bench-one.log 2>&1 & pid=$!
  bench ray-one "c1-ray-r$1.json" $C1
}
c1_single() {
  $S serve --backend llamacpp --port $PORT --served-model-name smol -o n_parallel=2 -o n_ctx_per_seq=2048 \
    -o n_threads=2 > /tmp/ray-bench-single.log 2>&1 & pid=$!
  bench single-process "c1-single-r$1.json" $C1
}
if [[ " $PARTS " == *" c1 "* ]]; then
  for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then c1_ray "$r"; c1_single "$r"; else c1_single "$r"; c1_ray "$r"; fi
  done
fi
${PYTHON:-.venv/bin/python} -m benchmarks.ray_summary "$D"
