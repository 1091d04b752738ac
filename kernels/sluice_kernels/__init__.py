"""GPU kernels (Triton) for the native engine, each beside its plain-PyTorch reference.

Nothing here is imported by the model: the GPTQ quant method and the attention-backend registry
import these modules lazily, on CUDA only. See README.md in this folder for layouts and tests.
"""
