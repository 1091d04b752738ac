# Made at commit 7337604 by:
SLUICE=".venv/bin/sluice" PORT=8301 N_PREFIX=64 N_C1=24 bash benchmarks/ray_bench.sh benchmarks/results/2026-11-30-ray2
