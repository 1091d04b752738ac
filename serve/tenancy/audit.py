"""The audit log: one JSON line per request, appended to a file.

A line holds who (key id, client address), what (model, request id, path), how it went (status,
latency, finish reasons, error type) and token counts. Never prompt or output text unless the server
was started with --audit-log-prompts: an audit log is read by more people than the prompts are meant
for. The file is created readable by its owner only for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("sluice.audit")


class AuditLog:
    def __init__(self, path: str | Path, include_prompts: bool = False) -> None:
        self.path = Path(path)
        self.include_prompts = include_prompts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # Line-buffered: each record reaches the file whole, as one append, when it is written.
        self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.include_prompts:
            record = {k: v for k, v in record.items() if k not in ("prompt", "output")}
        try:
            self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")
        except OSError as e:  # a full disk must not fail the request that was already answered
            log.error("audit log %s: write failed: %s", self.path, e)

    def close(self) -> None:
        self._file.close()


def utc_iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
