"""The result file: a versioned JSON document (schema in benchmarks/README.md), plus CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from benchmarks.metrics import aggregate
from benchmarks.record import RequestRecord, record_from_json

SCHEMA = "sluice.bench.result"
SCHEMA_VERSION = 1


class ResultError(ValueError):
    """A file is not a readable result of this schema."""


def run_entry(load: dict[str, Any], records: list[RequestRecord], slo: dict[str, float]) -> dict[str, Any]:
    """One load level: its parameters, aggregates and every request (times relative to its start)."""
    origin = min((r.sent for r in records), default=0.0)
    return {"load": load, "aggregates": aggregate(records, slo),
            "requests": [r.to_json(origin) for r in records]}


def build_result(*, command_line: list[str], label: str, target: dict[str, Any], workload: dict[str, Any],
                 load: dict[str, Any], slo: dict[str, float], runs: list[dict[str, Any]],
                 machine: dict[str, Any], git_commit: str | None, notes: list[str]) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": label, "command_line": command_line, "git_commit": git_commit, "machine": machine,
        "target": target, "workload": workload, "load": load,
        "slo": {f"{k}_ms": v * 1e3 for k, v in slo.items()},
        "notes": notes, "runs": runs,
    }


def write_json(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")


def load_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ResultError(f"{path}: no such file") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultError(f"{path}: not a sluice bench result (schema {SCHEMA!r} expected)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ResultError(f"{path}: schema_version {data.get('schema_version')} is not {SCHEMA_VERSION}; "
                          "re-run the benchmark with this version")
    if not data.get("runs"):
        raise ResultError(f"{path}: holds no runs")
    return data


def records_of(run: dict[str, Any]) -> list[RequestRecord]:
    return [record_from_json(r) for r in run["requests"]]


CSV_FIELDS = ("run", "index", "conversation", "turn", "sent", "end", "ttft_ms", "tpot_ms", "e2e_ms",
              "prompt_tokens", "output_tokens", "token_source", "cached_tokens", "finish_reason",
              "error_kind", "status")


def write_csv(result: dict[str, Any], path: str | Path) -> None:
    """One row per request, every run; the `run` column is the load level's index in `runs`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for i, run in enumerate(result["runs"]):
            for req in run["requests"]:
                w.writerow({"run": i, **req})
