"""Offline weight quantization: GPTQ and RTN to GPTQ-format checkpoints (`sluice quantize`)."""
