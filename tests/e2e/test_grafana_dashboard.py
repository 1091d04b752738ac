"""deploy/grafana/sluice.json queries only metrics a live `sluice serve` exports: a renamed metric
breaks this test rather than leaving an empty panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.server_proc import MODEL, REPO, start_server
from tests.requirements import model_missing, requires

pytestmark = [pytest.mark.e2e, requires("model", model_missing())]
DASHBOARD = REPO / "deploy" / "grafana" / "sluice.json"


def _queried() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all("sluice:" in e for e in exprs)
    return {m for e in exprs for m in re.findall(r"sluice:[A-Za-z0-9_:]+", e)}


_SERIES = {"counter": ("", "_total"), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count")}


def _exported(text: str) -> set[str]:
    """Series names with a sample, and those a declared family will have: a labelled counter that
    has not counted yet (errors, retries) is declared by its `# TYPE` line alone."""
    names = set(re.findall(r"^(sluice:[A-Za-z0-9_:]+)(?:\{| )", text, re.M))
    for family, kind in re.findall(r"^# TYPE (sluice:[A-Za-z0-9_:]+) (\w+)$", text, re.M):
        names |= {family + suffix for suffix in _SERIES.get(kind, ("",))}
    return names


def test_every_queried_metric_is_exported(tmp_path: Path) -> None:
    server = start_server(["--backend", "llamacpp", "-o", "n_parallel=1", "-o", "n_threads=1"], tmp_path)
    try:
        # One request, so that every labelled series has a sample.
        r = httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                       json={"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True})
        assert r.status_code == 200
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    finally:
        server.stop()
    missing = _queried() - _exported(text)
    assert not missing, f"the dashboard queries metrics /metrics does not export: {sorted(missing)}"
