#!/usr/bin/env bash
# How quality.jsonl and decode.json in this directory were made (SmolLM2-135M-Instruct, 2-core CPU shared
# with other benchmark runs; HF dir = the bundled Q4_1 GGUF dequantized to f32 by benchmarks/hf_export).
set -euo pipefail
export HF_HUB_OFFLINE=1
HF=/work/peers/smollm2-135m-instruct-hf                      # python -m benchmarks.hf_export GGUF $HF
GGUF=~/.cache/sluice/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
Q=/tmp/qout
R=benchmarks/results/2026-11-22-quality
sluice() { .venv/bin/python -m serve.cli "$@"; }

sluice quantize --method rtn  --bits 4 --group-size 128 $HF $Q/smollm2-rtn-int4-g128
for d in 0.01 0.3; do   # calibration: Python's pydoc topics (default --calib), 32 x 512 tokens
  sluice quantize --method gptq --bits 4 --group-size 128 --nsamples 32 --seqlen 512 --no-true-sequential \
    --damp $d --threads 1 $HF $Q/smollm2-gptq-int4-g128-damp$d
done

EVAL="--max-tokens 1024 --context 512 --stride 256 --tokenizer $HF --threads 1 --out $R/quality.jsonl"
sluice bench quality --model $GGUF --engine llamacpp --label gguf-q4_1-llamacpp $EVAL
sluice bench quality --model $Q/smollm2-rtn-int4-g128 --label rtn-int4-g128-native $EVAL
for d in 0.01 0.3; do sluice bench quality --model $Q/smollm2-gptq-int4-g128-damp$d --label gptq-int4-g128-damp$d-native $EVAL; done
sluice bench quality --model $HF --label bf16-native $EVAL
sluice bench quality --model $HF --quant int8 --label int8-native $EVAL
sluice bench quality --model $GGUF --quant gguf --label gguf-q4_1-native-int4 $EVAL

# the same tokens budget on a second, in-domain text (technical English; not the calibration source)
for m in "$HF bf16-native" "$Q/smollm2-rtn-int4-g128 rtn-int4-g128-native" \
         "$Q/smollm2-gptq-int4-g128-damp0.01 gptq-int4-g128-damp0.01-native" "$Q/smollm2-gptq-int4-g128-damp0.3 gptq-int4-g128-damp0.3-native"; do
  set -- $m; sluice bench quality --model $1 --label $2 --text benchmarks/data/python311_stdlib_docstrings.txt $EVAL
done

# decode: all variants loaded in one process, interleaved rounds (threads 1: the 2 cores were shared)
.venv/bin/python -m benchmarks.quant_decode --steps 32 --rounds 5 --threads 1 --out $R/decode.json \
  --variant bf16=$HF --variant int8=$HF:int8 --variant gptq-int4-g128=$Q/smollm2-gptq-int4-g128-damp0.01 \
  --variant gguf-q4_1-int4=$GGUF:gguf --variant gguf-dequantized-bf16=$GGUF
# the same with float32 activations (the engine's "auto" dtype on this AVX2 machine)
.venv/bin/python -m benchmarks.quant_decode --dtype float32 --steps 32 --rounds 5 --threads 1 --out $R/decode-f32.json \
  --variant f32=$HF --variant int8=$HF:int8 --variant gptq-int4-g128=$Q/smollm2-gptq-int4-g128-damp0.01 \
  --variant gguf-q4_1-int4=$GGUF:gguf
