"""matplotlib figures as base64 PNG strings, so an HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from benchmarks.result import records_of  # noqa: E402


def to_png_b64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def run_name(run: dict[str, Any]) -> str:
    load = run["load"]
    if load["kind"] == "rate":
        return "rate inf" if load.get("rate") is None else f"rate {load['rate']:g}/s"
    return "sync" if load["kind"] == "sync" else f"concurrency {load['concurrency']}"


def _shared_bins(groups: Sequence[Sequence[float]], n: int = 40) -> list[float]:
    """One set of bin edges for every run, so overlaid histograms compare bar for bar."""
    values = [v for g in groups for v in g]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-6 * max(1.0, abs(hi)):  # identical values: one visible bin around them
        lo, hi = lo - 0.5, hi + 0.5
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def distributions(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """Histograms of TTFT, ITL and E2E (ms), one colour per run, shared bins."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    per_metric: list[list[list[float]]] = [[], [], []]
    for run in runs:
        recs = [r for r in records_of(run) if r.ok]
        per_metric[0].append([r.ttft * 1e3 for r in recs if r.ttft is not None])
        per_metric[1].append([g * 1e3 for r in recs for g in r.itls])
        per_metric[2].append([r.e2e * 1e3 for r in recs])
    for ax, groups in zip(axes, per_metric, strict=True):
        if not any(groups):
            continue
        bins = _shared_bins(groups)
        for values, name in zip(groups, names, strict=True):
            if values:
                ax.hist(values, bins=bins, alpha=0.45, histtype="stepfilled", label=name)
    for ax, title in zip(axes, ("TTFT (ms)", "ITL (ms)", "E2E latency (ms)"), strict=True):
        ax.set_title(title)
        ax.set_ylabel("requests" if "ITL" not in title else "gaps")
    axes[0].legend(fontsize=8)
    return to_png_b64(fig)


def timeline(run: dict[str, Any]) -> str:
    """Output tokens per second over time and each request's TTFT at its send time."""
    recs = [r for r in records_of(run) if r.ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 3.5))
    times = [t for r in recs for t in r.chunk_times]
    weights = [(r.output_tokens or 0) / len(r.chunk_times) for r in recs for _ in r.chunk_times]
    if times:
        span = max(max(times), 1e-3)
        width = max(span / 30, 0.005)  # ~30 bars whatever the run length; heights are tokens per second
        nbins = max(1, round(span / width))
        ax1.hist(times, bins=nbins, range=(0, nbins * width), weights=[w / width for w in weights])
    steady = run["aggregates"]["steady_state"]
    if steady:
        ax1.axvspan(steady["start_s"], steady["start_s"] + steady["duration_s"], alpha=0.12, color="green",
                    label="steady-state window")
        ax1.legend(fontsize=8)
    ax1.set_title("output tokens per second")
    ax1.set_xlabel("s since first request")
    ax2.scatter([r.sent for r in recs], [(r.ttft or 0) * 1e3 for r in recs], s=8)
    ax2.set_title("TTFT by send time")
    ax2.set_xlabel("s since first request")
    ax2.set_ylabel("ms")
    return to_png_b64(fig)


def _x(run: dict[str, Any]) -> float:
    load = run["load"]
    if load["kind"] == "rate":
        return load.get("rate") or float("nan")
    return 1 if load["kind"] == "sync" else load["concurrency"]


def curves(results: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """Throughput and latency against concurrency (or rate), one line per result."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    xlabel = "concurrency"
    for res, label in zip(results, labels, strict=True):
        runs = res["runs"]
        if runs[0]["load"]["kind"] == "rate":
            xlabel = "request rate (1/s)"
        xs = [_x(r) for r in runs]
        agg = [r["aggregates"] for r in runs]
        axes[0].plot(xs, [a["output_throughput"] for a in agg], marker="o", label=label)
        axes[1].plot(xs, [a["ttft_ms"]["p50"] for a in agg], marker="o", label=f"{label} p50")
        axes[1].plot(xs, [a["ttft_ms"]["p99"] for a in agg], marker="x", linestyle="--", label=f"{label} p99")
        axes[2].plot(xs, [a["tpot_ms"]["p50"] for a in agg], marker="o", label=f"{label} p50")
        axes[2].plot(xs, [a["tpot_ms"]["p99"] for a in agg], marker="x", linestyle="--", label=f"{label} p99")
    ticks = sorted({_x(r) for res in results for r in res["runs"]})
    for ax, title in zip(axes, ("output tokens/s", "TTFT (ms)", "TPOT (ms)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return to_png_b64(fig)
