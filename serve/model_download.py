"""Download one registry wheel with pip, showing bytes, rate and ETA on the terminal.

pip stays the client (its index, mirrors and proxies are the user's configuration); its
`--progress-bar raw` prints `Progress DONE of TOTAL` lines, which we draw as one line on stderr.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


class Bar:
    def __init__(self, label: str, out: TextIO | None = None) -> None:
        self.label, self.out, self.t0 = label, out or sys.stderr, time.monotonic()

    def update(self, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = done / elapsed
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total else "?"
        self.out.write(f"\r{self.label}  {done / 1e6:7.1f}/{total / 1e6:.1f} MB  {rate / 1e6:6.1f} MB/s  ETA {eta:>5}")
        self.out.flush()

    def finish(self) -> None:
        self.out.write("\n")
        self.out.flush()


def download_wheel(requirement: str, dest: Path, bar: Bar | None) -> Path:
    """The wheel pip downloaded into `dest`; raises RuntimeError with pip's last word on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "raw", "-d", str(dest), requirement]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        m = _PROGRESS.search(line)
        if m and bar is not None:
            bar.update(int(m.group(1)), int(m.group(2)))
        elif line.strip():
            tail = [*tail[-4:], line.strip()]
    proc.wait()
    if bar is not None:
        bar.finish()
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError((tail or ["no wheel downloaded"])[-1])
    return wheels[0]
