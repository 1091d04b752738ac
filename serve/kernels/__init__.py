"""Engine-side entry points to the kernels, whose home is the top-level `kernels/` folder (import
name `sluice_kernels`, a leaf that never imports serve): `python -m serve.kernels.cpu` builds the CPU
kernels and prints, per op, the path this machine takes, with llama.cpp's CPU variant beside them;
`python -m serve.kernels.gpu_bench` checks and times the Triton kernels on a GPU."""
