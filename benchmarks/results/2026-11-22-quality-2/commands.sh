#!/usr/bin/env bash
# How quality.jsonl in this directory was made (SmolLM2-135M-Instruct; 2-core CPU shared with other jobs).
# Same evaluation as ../2026-11-22-quality (first 1,024 tokens, context 512, stride 256, same tokenizer).
set -euo pipefail
export HF_HUB_OFFLINE=1
HF=/work/peers/smollm2-135m-instruct-hf                      # python -m benchmarks.hf_export GGUF $HF
Q=/tmp/qout2
R=benchmarks/results/2026-11-22-quality-2
sluice() { .venv/bin/python -m serve.cli "$@"; }

sluice quantize --method rtn --bits 4 --group-size 128 --threads 1 $HF $Q/rtn-int4-g128
EVAL="--max-tokens 1024 --context 512 --stride 256 --tokenizer $HF --threads 1 --out $R/quality.jsonl"
for t in benchmarks/data/kjv_genesis37-45_ruth.txt benchmarks/data/python311_stdlib_docstrings.txt; do
  sluice bench quality --model $HF --label bf16-native --dtype bfloat16 --text $t $EVAL
  sluice bench quality --model $Q/rtn-int4-g128 --label rtn-int4-g128 --text $t $EVAL
done

# GPTQ with this session's defaults: calibration "mixed" (pydoc topics + Debian licence texts + the shipped
# fortunes English; none of it evaluation text), v_proj from the attention-mixed Hessian, damp 0.01.
# 32 x 512 calibration tokens and one Hessian pass per layer, as in ../2026-11-22-quality.
sluice quantize --method gptq --bits 4 --group-size 128 --nsamples 32 --seqlen 512 --no-true-sequential \
  --threads 1 $HF $Q/gptq-int4-g128
for t in benchmarks/data/kjv_genesis37-45_ruth.txt benchmarks/data/python311_stdlib_docstrings.txt; do
  sluice bench quality --model $Q/gptq-int4-g128 --label gptq-int4-g128 --text $t $EVAL
done
