"""The two Ray bars of issue #16 from a `benchmarks/ray_bench.sh` run directory, as summary.json:

- prefix routing: TTFT p50 of round-robin over prefix-affinity per prefix count (goal >= 3x), with
  each run's prefix-cache hits (requests with cached_tokens > 0);
- the Ray path's overhead at c=1 against the single-process server, per alternating round and the
  median over rounds (goal < 10%): E2E p50, TPOT p50, TTFT p50 and output throughput.

    python -m benchmarks.ray_summary benchmarks/results/<date>-ray2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

OVERHEAD_METRICS = ("e2e_ms", "tpot_ms", "ttft_ms")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _hits(run: dict[str, Any]) -> int:
    return sum(1 for r in run["requests"] if (r.get("cached_tokens") or 0) > 0)


def prefix_rows(d: Path) -> list[dict[str, Any]]:
    rows = []
    for aff in sorted(d.glob("prefix*-prefix-affinity.json")):
        rr = aff.with_name(aff.name.replace("prefix-affinity", "round-robin"))
        if not rr.is_file():
            continue
        a, b = _load(aff)["runs"][0], _load(rr)["runs"][0]
        ta, tb = a["aggregates"]["ttft_ms"]["p50"], b["aggregates"]["ttft_ms"]["p50"]
        rows.append({"prefixes": int(aff.name.split("-")[0].removeprefix("prefix")),
                     "affinity_ttft_p50_ms": round(ta, 1), "round_robin_ttft_p50_ms": round(tb, 1),
                     "ttft_p50_ratio": round(tb / ta, 2),
                     "affinity_hits": f"{_hits(a)}/{len(a['requests'])}",
                     "round_robin_hits": f"{_hits(b)}/{len(b['requests'])}"})
    return rows


def _figures(agg: dict[str, Any]) -> dict[str, float]:
    out = {m: round(agg[m]["p50"], 2) for m in OVERHEAD_METRICS}
    out["output_tok_s"] = round(agg["output_throughput"], 2)
    return out


def overhead_rounds(d: Path) -> list[dict[str, Any]]:
    rows = []
    for ray in sorted(d.glob("c1-ray-r*.json"), key=lambda p: int(p.stem.rsplit("r", 1)[1])):
        single = ray.with_name(ray.name.replace("c1-ray-", "c1-single-"))
        if not single.is_file():
            continue
        r, s = _figures(_load(ray)["runs"][0]["aggregates"]), _figures(_load(single)["runs"][0]["aggregates"])
        over = {f"{m}_overhead_pct": round(100 * (r[m] / s[m] - 1), 1) for m in OVERHEAD_METRICS}
        over["throughput_overhead_pct"] = round(100 * (1 - r["output_tok_s"] / s["output_tok_s"]), 1)
        rows.append({"round": int(ray.stem.rsplit("r", 1)[1]), "ray": r, "single": s, **over})
    return rows


def summarize(d: Path) -> dict[str, Any]:
    rounds = overhead_rounds(d)
    medians = {k: round(statistics.median(r[k] for r in rounds), 1)
               for k in (rounds[0] if rounds else {}) if k.endswith("_overhead_pct")}
    first = next(iter(sorted(d.glob("*.json"))), None)
    machine = _load(first).get("machine") if first and first.name != "summary.json" else None
    return {"ray_summary": 1, "source": str(d), "prefix_routing": prefix_rows(d),
            "ray_overhead": {"rounds": rounds, "median_pct": medians}, "machine": machine}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    d = Path(args[0])
    out = summarize(d)
    (d / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"prefix_routing": out["prefix_routing"], "ray_overhead_median_pct":
                      out["ray_overhead"]["median_pct"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
