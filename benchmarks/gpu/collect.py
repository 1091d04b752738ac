"""Gather one GPU run's figures into a single JSON (the last step of benchmarks/gpu/run.sh).

    python -m benchmarks.gpu.collect --out-dir DIR [--check]

Reads what the earlier steps left in DIR: pytest's junit XML (gpu_tests.xml), serve.kernels.gpu_bench's
output (kernels.log), the offline results (offline_b<N>.json with CUDA graphs, offline_b<N>_eager.json
without; their ratio per batch is `cuda_graph_speedup`) and each step's exit status (steps.tsv),
and writes DIR/gpu_results.json with the GPU name and the versions beside them. A missing input is
recorded as missing, not fatal: a step that timed out still leaves the others' figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# "attention seqs=32 ctx=512 q_len=1 torch.float16: ok  triton 0.0123 ms  torch_sdpa 0.0456 ms"
_LINE = re.compile(r"^(?P<case>(gptq|attention) [^:]+): (?P<status>ok|MISMATCH)(?P<times>.*)$")
_TIME = re.compile(r"(\w+) ([0-9.]+) ms")


def parse_kernel_log(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            times = {name: float(ms) for name, ms in _TIME.findall(m["times"])}
            rows.append({"case": m["case"], "ok": m["status"] == "ok", "median_ms": times})
    return rows


def parse_junit(path: Path) -> dict[str, Any]:
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome = next((c.tag for c in tc if c.tag in ("failure", "error", "skipped")), "passed")
        cases.append({"test": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome,
                      "seconds": float(tc.get("time") or 0)})
    return {"cases": cases, "passed": sum(c["outcome"] == "passed" for c in cases), "total": len(cases)}


def versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda}
    for name in ("triton", "flash_attn"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def _read(path: Path, parse: Any) -> Any:
    return parse(path) if path.is_file() else {"missing": path.name}


def collect(out_dir: Path) -> dict[str, Any]:
    steps = {}
    if (out_dir / "steps.tsv").is_file():
        for line in (out_dir / "steps.tsv").read_text().splitlines():
            name, rc, secs = line.split("\t")
            steps[name] = {"exit": int(rc), "seconds": float(secs)}
    runs = {p.stem.removeprefix("offline_b"): json.loads(p.read_text()) for p in sorted(out_dir.glob("offline_b*.json"))}
    offline = {k: v for k, v in runs.items() if not k.endswith("_eager")}
    eager = {k.removesuffix("_eager"): v for k, v in runs.items() if k.endswith("_eager")}
    return {"schema": "sluice.gpu.run", "schema_version": 2, "versions": versions(), "steps": steps,
            "gpu_tests": _read(out_dir / "gpu_tests.xml", parse_junit),
            "kernels": _read(out_dir / "kernels.log", lambda p: parse_kernel_log(p.read_text())),
            "offline_by_batch": offline, "offline_eager_by_batch": eager,
            "cuda_graph_speedup": graph_speedup(offline, eager)}


def _decode_rate(result: dict[str, Any]) -> float | None:
    """Decode tokens/s of one `sluice bench offline` result JSON (a top-level field)."""
    rate = result.get("decode_tokens_per_s")
    return float(rate) if isinstance(rate, int | float) else None


def graph_speedup(graphs: dict[str, Any], eager: dict[str, Any]) -> dict[str, float | None]:
    """Per batch: decode tokens/s with CUDA graphs / without (None where either run is missing)."""
    out: dict[str, float | None] = {}
    for batch in sorted(set(graphs) | set(eager), key=lambda b: int(b) if b.isdigit() else 0):
        g = _decode_rate(graphs[batch]) if batch in graphs else None
        e = _decode_rate(eager[batch]) if batch in eager else None
        out[batch] = round(g / e, 3) if g and e else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--check", action="store_true", help="import and parse only; write nothing")
    a = ap.parse_args(argv)
    result = collect(a.out_dir)
    if not a.check:
        (a.out_dir / "gpu_results.json").write_text(json.dumps(result, indent=1))
    print(f"gpu_results: {result['versions']['gpu']}, steps {result['steps']}, "
          f"CUDA-graph decode speedup by batch {result['cuda_graph_speedup']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
