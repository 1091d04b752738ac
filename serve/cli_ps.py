"""`sluice ps [--url BASE]`: the models of a running server, whether they are loaded, and their memory."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

from serve.cli_run import DEFAULT_URL


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="list the models of a running server and their memory")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="bearer key (default: $SLUICE_API_KEY)")
    p.add_argument("--all", action="store_true", help="also list models that are not loaded")
    p.set_defaults(func=run)


def _mib(n: Any) -> str:
    return f"{n / 2**20:.0f} MiB" if isinstance(n, int | float) and n > 0 else "-"


def _secs(s: Any) -> str:
    return "-" if s is None else f"{s:.0f}s"


def rows(stats: dict[str, Any], show_all: bool) -> list[str]:
    out = [f"{'NAME':28} {'STATE':9} {'BACKEND':9} {'MEMORY':>9} {'REQUESTS':>8} {'UP FOR':>7} {'IDLE':>6}"]
    for m in stats["models"]:
        if not show_all and m["state"] not in ("loaded", "loading"):
            continue
        requests = m.get("requests", m["running"] + m["waiting"])
        out.append(f"{m['name']:28} {m['state']:9} {m['backend']:9} {_mib(m.get('memory_bytes')):>9} "
                   f"{requests:>8} {_secs(m.get('loaded_for_s')):>7} {_secs(m.get('idle_s')):>6}")
    out.append(f"\nserver process RSS: {_mib(stats.get('process_rss_bytes'))}")
    return out


def run(args: argparse.Namespace) -> int:
    key = args.api_key or os.environ.get("SLUICE_API_KEY")
    base = args.url.rstrip("/").removesuffix("/v1")
    try:
        r = httpx.get(f"{base}/v1/stats", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=5)
        r.raise_for_status()
    except httpx.HTTPError as e:
        print(f"error: no Sluice server answering at {base} ({e})", file=sys.stderr)
        return 1
    print("\n".join(rows(r.json(), args.all)))
    return 0
