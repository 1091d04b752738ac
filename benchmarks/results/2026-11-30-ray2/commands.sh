# Made at commit 7337604 by:
SLUICE=".venv/bin/sluice" PORT=8301 N_PREFIX=64 N_C1=24 bash benchmarks/ray_bench.sh benchmarks/results/2026-11-30-ray2
# Its c1-ray.json / c1-single.json (one round: E2E p50 1348 vs 1096 ms, +23%) were replaced by the rounds
# below, after a re-run of the single-process side alone read 1287 ms: one round cannot tell drift from overhead.
# Made at commit 409db4c by:
SLUICE=".venv/bin/sluice" PORT=8301 N_PREFIX=64 N_C1=24 ROUNDS=4 PARTS="c1" bash benchmarks/ray_bench.sh benchmarks/results/2026-11-30-ray2
