#!/usr/bin/env bash
# How quality.jsonl in this directory was made (SmolLM2-135M-Instruct; 2-core CPU shared with other sessions).
# Evaluation exactly as in ../2026-11-22-quality-2 (native engine, bf16, first 1,024 tokens, context 512,
# stride 256). Question: what does the vLLM-loadable layout (symmetric, group 64: whole groups over
# SmolLM2's 576 input columns) cost against the asymmetric grid at the same group size?
# Run before `--format` existed: `--sym --group-size 64` writes the same tensors as today's defaults
# (`sluice quantize --method rtn HF OUT`; checked by sha256 of model.safetensors, see README.md).
set -euo pipefail
export HF_HUB_OFFLINE=1
GGUF=~/.cache/sluice/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
HF=/tmp/wq/m/hf                                # sluice models convert $GGUF $HF
Q=/tmp/wq/m/q
R=${R:-benchmarks/results/2026-11-30-gptq-interop}
sluice() { /work/main/.venv/bin/python -m serve.cli "$@"; }

sluice models convert $GGUF $HF
sluice quantize --method rtn --bits 4 --group-size 64 --sym --threads 1 $HF $Q/rtn-sym-g64
sluice quantize --method rtn --bits 4 --group-size 64 --threads 1 $HF $Q/rtn-asym-g64
# GPTQ as in ../2026-11-22-quality-2: calibration "mixed", 32 x 512 tokens, one Hessian pass per layer
for s in sym asym; do
  flag=$([ $s = sym ] && echo --sym || true)
  sluice quantize --method gptq --bits 4 --group-size 64 $flag --nsamples 32 --seqlen 512 --no-true-sequential \
    --threads 1 $HF $Q/gptq-$s-g64
done
EVAL="--max-tokens 1024 --context 512 --stride 256 --tokenizer $HF --threads 1 --dtype bfloat16 --out $R/quality.jsonl"
for t in benchmarks/data/kjv_genesis37-45_ruth.txt benchmarks/data/python311_stdlib_docstrings.txt; do
  sluice bench quality --model $HF --label bf16-native --text $t $EVAL
  for m in rtn-sym-g64 rtn-asym-g64 gptq-sym-g64 gptq-asym-g64; do
    sluice bench quality --model $Q/$m --label $m --text $t $EVAL
  done
done
