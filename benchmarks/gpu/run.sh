#!/usr/bin/env bash
# The one prepared GPU run (issue 17): gpu-marked tests, attention/GEMM kernels side by side, the
# native engine's offline bench at batch 1/32/256 with CUDA graphs for decode and without (eager),
# all figures in $OUT/gpu_results.json.
#
#   benchmarks/gpu/prepare.sh            # here, with PyPI: fetch the carried wheels
#   benchmarks/gpu/run.sh                # there, on the GPU machine (carry benchmarks/gpu/wheels)
#   benchmarks/gpu/run.sh --dry-run      # CI, on CPU: every step resolved, no GPU work
#
# Knobs (environment): PYTHON, OUT, GPU_TESTS (test files), WHEEL_LIST, WHEEL_DIR, GPU_MODEL (a
# checkpoint on the machine; default: a random-weight SmolLM2-135M shape), BATCHES.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
GPU_TESTS=${GPU_TESTS:-tests/kernels/test_gpu_compiled.py tests/unit/test_model_attention.py tests/unit/test_cuda_graphs_gpu.py}
WHEEL_LIST=${WHEEL_LIST:-benchmarks/gpu/wheels.txt}
WHEEL_DIR=${WHEEL_DIR:-benchmarks/gpu/wheels}
BATCHES=${BATCHES:-1,32,256}
# Seconds per step; together 470 s, inside the issue's 8 minutes with room for install and collect.
# The offline step runs each batch twice (CUDA graphs on, then eager), hence its larger share.
T_TESTS=${T_TESTS:-180} T_KERNELS=${T_KERNELS:-80} T_OFFLINE=${T_OFFLINE:-210}
export PYTHONPATH="$ROOT/kernels:$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

die() { echo "run.sh: $*" >&2; exit 1; }

# Each wheel-list line must be NAME==VERSION and equal pyproject.toml's pin, so the GPU machine
# runs the versions CI tested.
check_wheel_list() {
  [[ -f $WHEEL_LIST ]] || die "wheel list $WHEEL_LIST does not exist"
  "$PYTHON" - "$WHEEL_LIST" <<'PY' || die "wheel list $WHEEL_LIST does not match pyproject.toml (above)"
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
pins = {}
for r in reqs:
    m = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==(\S+)$", r)
    if m:
        pins[m[1].lower().replace("_", "-")] = m[3]
bad = 0
for n, line in enumerate(open(sys.argv[1]), 1):
    line = line.split("#")[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
    name = m and m[1].lower().replace("_", "-")
    if not m:
        print(f"{sys.argv[1]}:{n}: {line!r} is not pinned as NAME==VERSION"); bad = 1
    elif pins.get(name) != m[2]:
        print(f"{sys.argv[1]}:{n}: {line} but pyproject.toml pins {name}=={pins.get(name, 'nothing')}"); bad = 1
sys.exit(bad)
PY
}

# pytest collects gpu tests on CPU too (then skips them), so a renamed or deleted test fails here.
check_tests() {
  local f
  for f in $GPU_TESTS; do [[ -f $f ]] || die "GPU test file $f does not exist"; done
  local listing rc=0
  listing=$("$PYTHON" -m pytest --collect-only -q -p no:cacheprovider -m gpu $GPU_TESTS 2>&1) || rc=$?
  [[ $rc -ne 5 ]] || die "$GPU_TESTS holds no test marked gpu"  # pytest's "no tests collected"
  [[ $rc -eq 0 ]] || die "pytest could not collect the gpu tests in $GPU_TESTS:"$'\n'"$listing"
  for f in $GPU_TESTS; do
    grep -q "^$f::" <<<"$listing" || die "$f holds no test marked gpu"
  done
  echo "dry-run: gpu tests collected:"; grep '::' <<<"$listing" | sed 's/^/  /'
}

# Imports every entry point and parses each step's command line, without GPU work.
check_entry_points() {
  local scratch; scratch=$(mktemp -d)
  "$PYTHON" -c "import serve.kernels.gpu_bench, benchmarks.gpu.engine_bench, benchmarks.gpu.collect" \
    || die "an entry point does not import"
  "$PYTHON" -m serve.kernels.gpu_bench --help >/dev/null || die "serve.kernels.gpu_bench --help failed"
  "$PYTHON" -m benchmarks.gpu.engine_bench --check --device cpu --batches "$BATCHES" --out-dir "$scratch" \
    || die "the offline bench commands do not parse"
  "$PYTHON" -m benchmarks.gpu.collect --check --out-dir "$scratch" >/dev/null || die "collect failed"
  rm -rf "$scratch"
}

dry_run() {
  check_wheel_list && echo "dry-run: $WHEEL_LIST pinned as pyproject.toml"
  check_tests
  check_entry_points
  echo "dry-run: ok"
}

# The wheels go into a target folder on PYTHONPATH, so the image's own packages stay as they are.
install_wheels() {
  local target=/tmp/sluice-gpu-site
  [[ -d $WHEEL_DIR ]] || die "no $WHEEL_DIR: run benchmarks/gpu/prepare.sh here and carry that folder"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$target" "$WHEEL_DIR"/*.whl
  export PYTHONPATH="$PYTHONPATH:$target"
}

# step NAME SECONDS CMD...: runs CMD under `timeout`, logs to $OUT/NAME.log, records the status; a
# failing step does not stop the later ones (each figure is worth having on its own).
step() {
  local name=$1 limit=$2 start rc=0; shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1 || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >>"$OUT/steps.tsv"
}

real_run() {
  : "${OUT:?set OUT to the folder the results go to}"
  mkdir -p "$OUT"; : >"$OUT/steps.tsv"
  check_wheel_list
  install_wheels
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/nvidia-smi.csv" || true
  step gpu_tests "$T_TESTS" "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$OUT/gpu_tests.xml" $GPU_TESTS
  step kernels "$T_KERNELS" env -u TRITON_INTERPRET "$PYTHON" -m serve.kernels.gpu_bench
  local bench_dir=/tmp/sluice-gpu-bench
  step offline "$T_OFFLINE" "$PYTHON" -m benchmarks.gpu.engine_bench --out-dir "$bench_dir" \
    --batches "$BATCHES" ${GPU_MODEL:+--model "$GPU_MODEL"}
  cp "$bench_dir"/offline_b*.json "$OUT"/ 2>/dev/null || true
  "$PYTHON" -m benchmarks.gpu.collect --out-dir "$OUT"
  ! grep -qv $'\t0\t' "$OUT/steps.tsv"  # the run's status: every step passed
}

case "${1:-}" in
  --dry-run) dry_run ;;
  "") real_run ;;
  *) die "usage: $0 [--dry-run]" ;;
esac
