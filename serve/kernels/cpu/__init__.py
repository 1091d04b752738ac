"""`python -m serve.kernels.cpu` (see __main__.py); the kernels themselves are in sluice_kernels.cpu."""
